"""rtstream_cli.cloudformation: the one loader and intrinsic resolver of the local system."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtstream_cli.cloudformation import (
    TEMPLATE_PATH, Intrinsics, Unresolved, conditions_used, load_template, referenced_ids,
)

TEMPLATE = {
    "Parameters": {
        "Stage": {"Type": "String", "Default": "dev"},
        "Subnets": {"Type": "CommaDelimitedList", "Default": "a,b,c"},
        "Secret": {"Type": "String"},
    },
    "Conditions": {
        "IsProd": {"Fn::Equals": [{"Ref": "Stage"}, "prod"]},
        "NotProd": {"Fn::Not": [{"Condition": "IsProd"}]},
        "Both": {"Fn::And": [{"Condition": "NotProd"}, {"Fn::Equals": ["x", "x"]}]},
    },
    "Resources": {"Api": {"Type": "AWS::ApiGatewayV2::Api"}},
}


def test_short_tags_load_in_their_long_form(tmp_path: Path):
    path = tmp_path / "t.yaml"
    path.write_text(
        "Resources:\n  Fn:\n    Properties:\n"
        "      A: !Ref Stage\n      B: !GetAtt Api.ApiEndpoint\n      C: !Sub '${Api}/x'\n"
        "      D: !If [IsProd, !Join ['-', [a, !Ref Stage]], !Ref AWS::NoValue]\n      E: !Select [1, !Split [',', 'p,q']]\n"
    )
    props = load_template(path)["Resources"]["Fn"]["Properties"]
    assert props == {
        "A": {"Ref": "Stage"}, "B": {"Fn::GetAtt": ["Api", "ApiEndpoint"]}, "C": {"Fn::Sub": "${Api}/x"},
        "D": {"Fn::If": ["IsProd", {"Fn::Join": ["-", ["a", {"Ref": "Stage"}]]}, {"Ref": "AWS::NoValue"}]},
        "E": {"Fn::Select": [1, {"Fn::Split": [",", "p,q"]}]},
    }
    assert "WebSocketApi" in load_template(TEMPLATE_PATH)["Resources"]


def test_intrinsics_resolve_to_local_values():
    resolve = Intrinsics(TEMPLATE, region="eu-west-1", parameters={"Secret": "s"},
                         resources={"Api": "abc", "Api.ApiEndpoint": "wss://abc"})
    assert resolve({"Ref": "Stage"}) == "dev" and resolve({"Ref": "Secret"}) == "s"
    assert resolve({"Ref": "Subnets"}) == ["a", "b", "c"]
    assert resolve({"Fn::Sub": "${Api}.${AWS::Region}/${Stage}/${!Literal}"}) == "abc.eu-west-1/dev/${Literal}"
    assert resolve({"Fn::Sub": ["${X}-${Api.ApiEndpoint}", {"X": {"Ref": "Stage"}}]}) == "dev-wss://abc"
    assert resolve({"Fn::GetAtt": ["Api", "ApiEndpoint"]}) == "wss://abc"
    assert resolve({"Fn::Join": [",", [{"Ref": "Stage"}, "b"]]}) == "dev,b"
    assert resolve({"Fn::Select": [1, {"Fn::Split": [",", "p,q"]}]}) == "q"
    assert resolve.condition("NotProd") is True and resolve.condition("Both") is True
    assert resolve({"Fn::If": ["IsProd", "big", "small"]}) == "small"
    # AWS::NoValue removes the property (and the list item)
    assert resolve({"A": {"Fn::If": ["IsProd", 1, {"Ref": "AWS::NoValue"}]}, "B": [1, {"Ref": "AWS::NoValue"}]}) == {"B": [1]}
    prod = Intrinsics(TEMPLATE, parameters={"Stage": "prod"})
    assert prod.condition("IsProd") is True and prod({"Fn::If": ["IsProd", "big", "small"]}) == "big"


def test_what_only_a_deployed_stack_knows_is_unresolved():
    resolve = Intrinsics(TEMPLATE)
    for value in ({"Ref": "Secret"}, {"Ref": "Api"}, {"Fn::GetAtt": ["Api", "ApiEndpoint"]},
                  {"Fn::Sub": "${Api}"}, {"Fn::ImportValue": "x"}, {"Fn::If": ["Missing", 1, 2]}):
        with pytest.raises(Unresolved):
            resolve(value)


def test_references_and_conditions_used():
    fragment = {"A": {"Fn::Sub": ["${Api.Id}/${X}/${!Lit}", {"X": {"Ref": "Stage"}}]},
                "B": {"Fn::If": ["IsProd", {"Fn::GetAtt": "Table.Arn"}, {"Condition": "Other"}]}}
    assert referenced_ids(fragment) == {"Api", "Stage", "Table"}  # X is the Sub's own variable
    assert conditions_used(fragment) == {"IsProd", "Other"}
