"""Task ids at the HTTP edge with no model: the header reaches `Factory.start` from any route,
and bad or disagreeing values are 400s naming the parameter."""

from __future__ import annotations

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from tokenfactory.server import factory as factory_module
from tokenfactory.server.errors import APIError
from tokenfactory.server.factory import remember_task_id_header, request_task_id


def test_header_or_body_gives_the_task_id():
    assert request_task_id(None, None) is None
    assert request_task_id("t-1", None) == "t-1"
    assert request_task_id(None, "t-2") == "t-2"
    assert request_task_id("same", "same") == "same"


@pytest.mark.parametrize(
    "header,body,param",
    [
        ("a", "b", "metadata.task_id"),
        ("x" * 129, None, "X-Task-Id"),
        ("", None, "X-Task-Id"),
        (None, "line\nbreak", "metadata.task_id"),
        (None, "x" * 129, "metadata.task_id"),
        ("ok", "\x1b[31m", "metadata.task_id"),
    ],
)
def test_bad_or_disagreeing_task_ids_are_400_naming_the_parameter(header, body, param):
    with pytest.raises(APIError) as info:
        request_task_id(header, body)
    err = info.value.body()["error"]
    assert info.value.status == 400 and err["param"] == param
    assert err["type"] == "invalid_request_error" and param in err["message"]


def test_the_app_wide_dependency_hands_the_header_to_the_handler():
    app = FastAPI(dependencies=[Depends(remember_task_id_header)])

    @app.post("/any")
    async def any_route() -> dict:  # as every API's route reaches Factory.start
        return {"seen": factory_module._task_id_header.get()}

    with TestClient(app) as client:
        assert client.post("/any", headers={"X-Task-Id": "run-9"}).json() == {"seen": "run-9"}
        assert client.post("/any").json() == {"seen": None}  # nothing left from before
