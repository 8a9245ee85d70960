"""docs/security.md's examples load as written (the ``sh`` example runs in
``tests/integration/test_tls.py``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from agentcast.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
SECTION = TEXT.split("## Origins, CORS and TLS", 1)[1].split("\n## ", 1)[0]
YAML = re.findall(r"```yaml\n(.*?)```", SECTION, flags=re.S)
SH = re.findall(r"```sh\n(.*?)```", SECTION, flags=re.S)


def test_section_has_its_examples() -> None:
    assert len(YAML) == 2 and len(SH) == 1


def test_settings_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "agentcast.yaml"
    path.write_text(YAML[0])
    s = load_settings(path)
    assert s.origins == ["http://localhost:3000", "https://app.example.com"]
    assert (s.tls_certfile, s.tls_keyfile) == ("cert.pem", "key.pem")


def test_seed002_example_is_the_seed_file(tmp_path: Path) -> None:
    seed_file = ROOT / "tests" / "data" / "seed002.yaml"
    assert yaml.safe_load(YAML[1]) == yaml.safe_load(seed_file.read_text())
    path = tmp_path / "seed002.yaml"
    path.write_text(YAML[1])
    assert load_settings(path).origins == ["http://localhost:3000"]


def test_environment_example(monkeypatch: pytest.MonkeyPatch) -> None:
    found = re.search(r"`AGENTCAST_ORIGINS=([^`]+)`", SECTION)
    assert found is not None
    monkeypatch.setenv("AGENTCAST_ORIGINS", found.group(1))
    assert load_settings().origins == ["http://localhost:3000", "https://app.example.com"]
