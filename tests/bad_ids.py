"""Malformed event ids that every entry point must refuse (issue 11: a
``"1-0\\n"`` or an overflowing part once stalled a whole fan-out partition)."""

MAX_PART = 2**64 - 1

BAD_EVENT_IDS = [
    "1-0\n",  # `$` matched before a trailing newline
    " 1-0",
    "1-0 ",
    "\u0661-0",  # ARABIC-INDIC DIGIT ONE: \d matches it, Redis does not
    "1-\u0660",
    "+1-0",
    "-1-0",
    "1--0",
    "1-",
    "-0",
    "1",
    "",
    "1-0-0",
    "0x1-0",
    f"{MAX_PART + 1}-0",  # 18446744073709551616-0
    f"0-{MAX_PART + 1}",
    "99999999999999999999-0",
    "1.0-0",
]

GOOD_EDGE_IDS = ["0-0", "0-1", f"{MAX_PART}-{MAX_PART}", f"{MAX_PART}-0", "00001-0"]
