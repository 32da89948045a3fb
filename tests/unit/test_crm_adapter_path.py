"""``<Adapter>package.module:Class</Adapter>``: CRM adapters outside the router package."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.config import Deployment
from router.crm.factory import make_crm
from router.errors import ConfigError
from tests.support.filecrm import FileCrm


def deployment(adapter: str, url: str = "https://crm.example") -> Deployment:
    return Deployment(name="d", adapter=adapter, crm_server_url=url)


def test_an_adapter_named_by_module_path_is_built_from_the_deployment(tmp_path: Path) -> None:
    crm = make_crm(deployment("tests.support.filecrm:FileCrm", f"file://{tmp_path}/crm.db"))
    assert isinstance(crm, FileCrm)
    assert crm.path == tmp_path / "crm.db"


@pytest.mark.parametrize(
    ("adapter", "problem"),
    [
        ("tests.support.nope:Crm", "cannot load <Adapter>"),
        ("tests.support.filecrm:Nope", "cannot load <Adapter>"),
        ("tests.support.filecrm:CrmFile", "is not a CrmAdapter"),
        ("dataverze", "use dataverse, memory or package.module:Class"),
    ],
)
def test_a_bad_adapter_path_is_a_configuration_error(adapter: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        make_crm(deployment(adapter))
