"""The agent registers its site's data set for each study it takes part in (counts only, never rows), again only
when its summary changes, and tells the site's staff feature by feature where the data file does not match the
protocol."""

from pathlib import Path

import pytest

from consortium.federated.dataset_schema import summary_sha256
from sites.agent.client import AgentClient
from sites.agent.data import DataError, load_table
from sites.agent.demo_data import DEMO_PROTOCOL, feature_names, write_partitions
from sites.agent.runner import Agent
from tests.agent.scripted_server import Reply

ME = {"site": {"id": 3, "code": "amc", "name": "Amsterdam UMC"}, "token": {"prefix": "cst_ab12"}}
PROTOCOL = {**DEMO_PROTOCOL, "feature_names": feature_names()}


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory) -> Path:
    return write_partitions(tmp_path_factory.mktemp("demo"), ["amc", "hus"], seed=0)["amc"]


def study(registered: str | None = None, **protocol) -> dict:
    return {"study_id": 2, "study_title": "Breast cancer", "status": "active", "protocol": {**PROTOCOL, **protocol},
            "protocol_sha256": "a" * 64, "dataset_summary_sha256": registered}


def script(server, *studies: dict, answer: dict | None = None) -> None:
    server.on("GET", "/api/agent/me/", Reply(200, ME))
    server.on("GET", "/api/agent/studies/", Reply(200, list(studies)))
    server.on("GET", "/api/agent/rounds/", Reply(200, []))
    server.on("POST", "/api/agent/studies/2/dataset/", Reply(201, answer or {"matches_protocol": True,
                                                                              "mismatches": []}))


def run(server, table, lines: list[str], **options) -> int:
    client = AgentClient(server.url, "cst_secret", sleep=lambda s: None, timeout=5)
    return Agent(client, table, say=lines.append, **options).run(once=True, poll=0)


def test_it_registers_counts_names_types_and_missing_values_but_never_rows(server, csv_path):
    script(server, study())
    lines: list[str] = []
    table = load_table(csv_path)
    assert run(server, table, lines) == 0
    [sent] = server.requests_to("POST", "/api/agent/studies/2/dataset/")
    summary = sent.json()
    assert set(summary) == {"rows", "label_column", "label", "features"}
    assert summary["rows"] == len(table.values) and summary["label_column"] == "target"
    label = summary["label"]
    assert label["present"] and label["positives"] + label["negatives"] == summary["rows"] and label["other"] == 0
    assert [f["name"] for f in summary["features"]] == feature_names()
    assert {f["type"] for f in summary["features"]} <= {"float", "integer", "binary"}
    assert all(f["missing"] == 0 and set(f) == {"name", "type", "missing"} for f in summary["features"])
    assert f"{table.values[0][0]!r}" not in sent.body.decode()  # no cell value travels
    assert any("registered this site's data set (" in line and "it matches the study's protocol" in line
               for line in lines)


def test_it_does_not_register_again_a_summary_the_coordinator_already_holds(server, csv_path):
    table = load_table(csv_path)
    script(server, study(registered=summary_sha256(table.summary("target"))))
    lines: list[str] = []
    assert run(server, table, lines) == 0
    assert server.requests_to("POST", "/api/agent/studies/2/dataset/") == []
    assert any("the coordinator holds this site's data set" in line for line in lines)


def test_it_reports_a_mismatch_feature_by_feature_in_plain_words(server, tmp_path, csv_path):
    # The site's file lacks "mean radius" and has a column the protocol does not know, with two missing cells.
    rows = csv_path.read_text().splitlines()
    header = rows[0].split(",")
    index = header.index("mean radius")
    header[index] = "radius_mm"
    body = [row.split(",") for row in rows[1:]]
    body[0][index] = body[1][index] = ""
    edited = tmp_path / "site.csv"
    edited.write_text("\n".join(",".join(cells) for cells in [header, *body]) + "\n")
    mismatches = ["missing feature 'mean radius'", "unexpected feature 'radius_mm'"]
    script(server, study(), answer={"matches_protocol": False, "mismatches": mismatches})
    lines: list[str] = []
    table = load_table(edited)
    assert run(server, table, lines) == 0
    sent = server.requests_to("POST", "/api/agent/studies/2/dataset/")[0].json()
    assert {"name": "radius_mm", "type": "float", "missing": 2} in sent["features"]
    [said] = [line for line in lines if "does NOT match" in line]
    assert "2 missing values" in said and "not eligible for its rounds until the data file is fixed" in said
    assert "\n  - missing feature 'mean radius'\n  - unexpected feature 'radius_mm'" in said
    with pytest.raises(DataError, match="Column 'radius_mm' .* has 2 missing value"):
        table.dataset("target")  # and it will not train on incomplete rows


def test_it_registers_again_when_the_data_file_changes(server, tmp_path, csv_path):
    path = tmp_path / "site.csv"
    path.write_text(csv_path.read_text())
    table = load_table(path)
    script(server, study())
    lines: list[str] = []
    now = [0.0]
    client = AgentClient(server.url, "cst_secret", sleep=lambda s: None, timeout=5)
    agent = Agent(client, table, say=lines.append, data_path=str(path), register_every=30, clock=lambda: now[0])
    agent.introduce()
    agent.register_datasets()
    fewer = csv_path.read_text().splitlines()[:-10]
    path.write_text("\n".join(fewer) + "\n")
    agent.register_datasets()
    first, second = (seen.json() for seen in server.requests_to("POST", "/api/agent/studies/2/dataset/"))
    assert second["rows"] == first["rows"] - 10
    assert any("The data file changed" in line for line in lines)


def test_it_reorders_the_columns_to_the_protocols_declared_order(csv_path, tmp_path):
    rows = [line.split(",") for line in csv_path.read_text().splitlines()]
    swapped = tmp_path / "swapped.csv"
    swapped.write_text("\n".join(",".join([row[1], row[0], *row[2:]]) for row in rows) + "\n")
    original, reordered = load_table(csv_path).dataset("target"), load_table(swapped).dataset("target",
                                                                                            feature_names())
    assert reordered.features == original.features == feature_names()
    assert (reordered.x == original.x).all()
