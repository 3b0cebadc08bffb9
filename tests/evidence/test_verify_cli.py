"""`python -m consortium.verify`: the auditor's command, run as they would, without Django, Celery or torch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from consortium.evidence import signing
from tests.evidence.support import edit_jsonl, resign, synthetic_log, write

ROOT = Path(__file__).resolve().parents[2]
KEY = signing.generate_private_key()
# Runs the verifier with the server's frameworks made unimportable, as on a laptop that never installed them.
WITHOUT_SERVER_PACKAGES = """
import runpy, sys

class Refuse:
    BLOCKED = {"django", "celery", "kombu", "rest_framework", "channels", "torch", "numpy"}

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.BLOCKED:
            raise ImportError(f"{name} is not installed on the auditor's laptop")
        return None

sys.meta_path.insert(0, Refuse())
sys.argv[0] = "consortium.verify"
runpy.run_module("consortium.verify", run_name="__main__", alter_sys=True)
"""


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_SERVER_PACKAGES, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def log():
    return synthetic_log(40)


@pytest.fixture
def public_key(tmp_path) -> Path:
    path = tmp_path / "coordinator.pem"
    path.write_bytes(signing.public_key_pem(KEY.public_key()))
    return path


def test_it_verifies_a_bundle_without_django_celery_or_torch_and_prints_each_check(tmp_path, log, public_key):
    bundle = write(tmp_path, log, KEY, name="export.zip", filters={"study_id": 2}, first_seq=5)
    result = run(bundle, "--public-key", public_key)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["manifest", "checkpoint", "files", "events", "chain", "filter",
                                                      "merkle", "OK"]
    assert "filter: 9 included events match study_id 2; 27 skipped events do not" in result.stdout
    assert lines[-1] == "OK" and result.stderr == ""


def test_it_takes_a_raw_public_key_and_an_earlier_checkpoint_held_by_a_site(tmp_path, log, public_key):
    held = log.checkpoint(KEY, 25)
    bundle = write(tmp_path, log, KEY, earlier_checkpoints=[held])
    (tmp_path / "site.json").write_text(json.dumps(held))
    (tmp_path / "key.hex").write_text(signing.public_key_raw(KEY.public_key()).hex())
    result = run(bundle, "--public-key", tmp_path / "key.hex", "--checkpoint", tmp_path / "site.json")
    assert result.returncode == 0, result.stderr
    assert "consistency: held checkpoint #25 of consortium-audit" in result.stdout


def test_it_exits_1_naming_the_first_problem(tmp_path, log, public_key):
    bundle = write(tmp_path, log, KEY)
    edit_jsonl(bundle, "events.jsonl", lambda rows: rows[6]["details"].update(n=-1) or rows)
    resign(bundle, KEY)
    result = run(bundle, "--public-key", public_key)
    assert result.returncode == 1
    assert result.stderr.strip() == "FAILED: event #7: content does not match its hash"
    assert "OK" not in result.stdout.splitlines()


def test_it_exits_1_on_a_missing_bundle_or_key_and_2_on_bad_usage(tmp_path, public_key):
    assert run(tmp_path / "nothing.zip", "--public-key", public_key).stderr.startswith("FAILED: bundle: ")
    result = run(tmp_path, "--public-key", tmp_path / "no-key.pem")
    assert result.returncode == 1 and "FAILED: public key: cannot read" in result.stderr
    assert run(tmp_path).returncode == 2  # --public-key is required
