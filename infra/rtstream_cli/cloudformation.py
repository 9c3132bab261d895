"""CloudFormation for the local system: load `template.yaml` and resolve
intrinsics to local values. The ONE such module: the gateway emulator,
`rtstream dev`, `deploy-local` (post-deploy steps) and the EventBridge drain
all read the template and resolve its values through here, so local and cloud
cannot drift.

Loading is samtranslator's (the `[local]` extra): its YAML helper turns the
short tags (`!Ref`, `!Sub`, `!GetAtt X.Y`, ...) into their long form, as SAM
does before transforming. Nothing here is imported by the light install.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from samtranslator.yaml_helper import yaml_parse

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = PROJECT_ROOT / "template.yaml"
ACCOUNT_ID = "123456789012"

# ${Name} / ${Name.Attr}; ${!Literal} is Fn::Sub's escape for a literal "${Literal}"
_SUB_VARIABLE = re.compile(r"\$\{([^}]+)\}")


class Unresolved(LookupError):
    """An intrinsic whose value only exists in a deployed stack (or nowhere)."""


def load_template(path: str | Path = TEMPLATE_PATH) -> dict[str, Any]:
    """The parsed template (cached per path: callers that change it copy it first)."""
    return _load(str(Path(path).resolve()))


@lru_cache(maxsize=8)
def _load(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        parsed = yaml_parse(fh.read())
    if not isinstance(parsed, dict):
        raise ValueError(f"{path} is not a CloudFormation template (a mapping)")
    return parsed


def resources_of_type(template: Mapping[str, Any], type_name: str) -> dict[str, dict[str, Any]]:
    return {lid: r for lid, r in (template.get("Resources") or {}).items() if r.get("Type") == type_name}


def parameter_defaults(template: Mapping[str, Any]) -> dict[str, str]:
    return {name: scalar(spec["Default"]) for name, spec in (template.get("Parameters") or {}).items()
            if isinstance(spec, dict) and "Default" in spec}


def scalar(value: Any) -> str:
    """A value as CloudFormation passes it to a string property (booleans lower-case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def pseudo_parameters(*, region: str, account_id: str = ACCOUNT_ID, stack_name: str = "rtstream-local") -> dict[str, str]:
    return {
        "AWS::Region": region,
        "AWS::AccountId": account_id,
        "AWS::StackName": stack_name,
        "AWS::StackId": f"arn:aws:cloudformation:{region}:{account_id}:stack/{stack_name}/local",
        "AWS::Partition": "aws",
        "AWS::URLSuffix": "amazonaws.com",
    }


class _NoValue:
    """``AWS::NoValue``: the property is removed."""


NO_VALUE = _NoValue()


class Intrinsics:
    """Resolves ``Ref``, ``Fn::GetAtt``, ``Fn::Sub``, ``Fn::Join``, ``Fn::Select``,
    ``Fn::Split``, ``Fn::If`` / ``Fn::Equals`` / ``Fn::Not`` / ``Fn::And`` /
    ``Fn::Or`` and named conditions to local values.

    ``resources`` maps a logical id to its physical id (``Ref``) and
    ``"LogicalId.Attribute"`` to an attribute (``Fn::GetAtt``); parameters take
    their template defaults unless ``parameters`` gives a value (list-typed ones
    resolve to lists); pseudo
    parameters are local constants unless ``pseudo`` overrides them. Anything
    else raises :class:`Unresolved`.
    """

    def __init__(self, template: Mapping[str, Any] | None = None, *, region: str = "us-east-1",
                 resources: Mapping[str, str] | None = None, parameters: Mapping[str, Any] | None = None,
                 pseudo: Mapping[str, str] | None = None, stack_name: str = "rtstream-local"):
        self.template: Mapping[str, Any] = template or {}
        self.resources = dict(resources or {})
        self.parameters: dict[str, Any] = {
            **parameter_defaults(self.template),
            **{k: v if isinstance(v, list) else scalar(v) for k, v in (parameters or {}).items()}}
        for name, spec in (self.template.get("Parameters") or {}).items():
            kind = str(spec.get("Type", "")) if isinstance(spec, dict) else ""
            value = self.parameters.get(name)
            if isinstance(value, str) and (kind == "CommaDelimitedList" or kind.startswith("List<")):
                self.parameters[name] = value.split(",")  # Ref to a list parameter is a list
        self.pseudo = {**pseudo_parameters(region=region, stack_name=stack_name), **dict(pseudo or {})}

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        for table in (self.pseudo, self.resources, self.parameters):
            if name in table:
                return table[name]
        raise Unresolved(name)

    def get_att(self, target: str) -> str:
        if target in self.resources:
            return self.resources[target]
        raise Unresolved(target)

    def condition(self, name: str) -> bool:
        conditions = self.template.get("Conditions") or {}
        if name not in conditions:
            raise Unresolved(f"Condition {name}")
        return bool(self.resolve(conditions[name]))

    def __call__(self, value: Any) -> Any:
        return self.resolve(value)

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [v for v in (self.resolve(v) for v in value) if v is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Condition" and isinstance(arg, str):
                return self.condition(arg)
            if key.startswith("Fn::"):
                return self._function(key, arg)
        resolved = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not NO_VALUE}

    def _function(self, key: str, arg: Any) -> Any:
        if key == "Fn::GetAtt":
            return self.get_att(".".join(arg) if isinstance(arg, list) else str(arg))
        if key == "Fn::Sub":
            return self._sub(arg)
        if key == "Fn::Join":
            sep, items = arg
            return str(sep).join(scalar(i) for i in self.resolve(items))
        if key == "Fn::Select":
            index, items = arg
            return self.resolve(items)[int(self.resolve(index))]
        if key == "Fn::Split":
            sep, text = arg
            return str(self.resolve(text)).split(str(sep))
        if key == "Fn::If":
            name, yes, no = arg
            return self.resolve(yes if self.condition(name) else no)
        if key == "Fn::Equals":
            a, b = arg
            return scalar(self.resolve(a)) == scalar(self.resolve(b))
        if key == "Fn::Not":
            return not self.resolve(arg[0])
        if key == "Fn::And":
            return all(self.resolve(a) for a in arg)
        if key == "Fn::Or":
            return any(self.resolve(a) for a in arg)
        raise Unresolved(key)

    def _sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1] if len(arg) > 1 else {})
        given = {k: self.resolve(v) for k, v in variables.items()}

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in given:
                return scalar(given[name])
            if "." in name and name not in self.pseudo:
                return scalar(self.get_att(name))
            return scalar(self.ref(name))

        return _SUB_VARIABLE.sub(substitute, text)


def referenced_ids(value: Any) -> set[str]:
    """Every logical id (or parameter) a fragment refers to: ``Ref``,
    ``Fn::GetAtt`` and ``${X}`` / ``${X.Attr}`` in ``Fn::Sub``."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, arg in value.items():
            if key == "Ref" and isinstance(arg, str):
                found.add(arg)
            elif key == "Fn::GetAtt":
                found.add(arg[0] if isinstance(arg, list) else str(arg).split(".", 1)[0])
            elif key == "Fn::Sub":
                text = arg if isinstance(arg, str) else arg[0]
                local = set(arg[1]) if isinstance(arg, list) and len(arg) > 1 and isinstance(arg[1], dict) else set()
                found.update(m.group(1).split(".", 1)[0] for m in _SUB_VARIABLE.finditer(text)
                             if not m.group(1).startswith("!") and m.group(1) not in local)
                if isinstance(arg, list) and len(arg) > 1:
                    found.update(referenced_ids(arg[1]))
            else:
                found.update(referenced_ids(arg))
    elif isinstance(value, list):
        for item in value:
            found.update(referenced_ids(item))
    return found


def conditions_used(value: Any) -> set[str]:
    """Condition names a fragment uses (a resource's or output's ``Condition``,
    ``Fn::If``'s first argument, ``{"Condition": name}`` inside conditions)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, arg in value.items():
            if key == "Condition" and isinstance(arg, str):
                found.add(arg)
            elif key == "Fn::If" and isinstance(arg, list) and arg:
                found.add(str(arg[0]))
                found.update(conditions_used(arg[1:]))
            else:
                found.update(conditions_used(arg))
    elif isinstance(value, list):
        for item in value:
            found.update(conditions_used(item))
    return found
