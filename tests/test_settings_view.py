"""The pydantic-free view of the settings the capture worker runs on."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import pydantic
import pytest

from opik_cipx.config import Settings
from opik_cipx.settings_view import CaptureSettings, SettingsView, parse_flag, parse_rate

# What a config file or a hand edit may hold: TOML types, and strings as users write them.
_VALUES: list[Any] = [
    True, False, 0, 1, 2, -1, 0.0, 1.0, 0.5, 1.5, 2.0, -0.0, "0.5", " 0.5 ", "1e-1", "-0", "nan", "inf",
    "abc", "", "True", "TRUE", "yes", " yes ", "YES", "On", "off", "OFF", "t", "F", "y", "n", "no", "1", "0",
    "2", None, [], {}, float("nan"),
]


def _pydantic(field: str, value: Any, home: Path) -> Any:
    try:
        return getattr(Settings.model_validate({field: value, "home": home}), field)
    except pydantic.ValidationError:
        return ValueError


def _ours(parse: Any, value: Any) -> Any:
    try:
        return parse(value)
    except ValueError:
        return ValueError


@pytest.mark.parametrize("value", _VALUES, ids=repr)
def test_the_hot_reloaded_options_parse_as_settings_parses_them(value: Any, tmp_path: Path) -> None:
    # A reload in the worker must accept and refuse exactly what start-up accepts and refuses.
    assert _ours(parse_flag, value) == _pydantic("capture_content", value, tmp_path)
    ours, theirs = _ours(parse_rate, value), _pydantic("sample_rate", value, tmp_path)
    assert ours == theirs and type(ours) is type(theirs)


def test_a_refused_value_says_which_option_and_why() -> None:
    with pytest.raises(ValueError, match=r"capture_content: 'maybe' is not a boolean"):
        parse_flag("maybe")
    with pytest.raises(ValueError, match=r"sample_rate: 7 is not between 0 and 1"):
        parse_rate(7)
    with pytest.raises(ValueError, match=r"sample_rate: 'half' is not a number"):
        parse_rate("half")


def test_the_view_derives_every_path_and_the_destination_as_settings_does(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "h", opik_api_key="k", pricing_path=tmp_path / "p.toml", sample_rate=0.5)
    view = SettingsView.of(settings)
    derived = [name for name, value in vars(CaptureSettings).items() if isinstance(value, property)]
    assert len(derived) >= 9
    for name in derived:
        assert getattr(view, name) == getattr(settings, name), name
    assert view.opik_url is not None and view.sample_rate == 0.5


def test_the_view_crosses_the_pipe_and_is_rebuilt_from_plain_values(tmp_path: Path) -> None:
    view = SettingsView.of(Settings(home=tmp_path, opik_base_url="http://127.0.0.1:5173/api", opik_debug=True))
    sent = pickle.dumps(dataclasses.asdict(view))
    assert SettingsView(**pickle.loads(sent)) == view  # noqa: S301 - what this test just pickled
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.home = tmp_path / "elsewhere"  # type: ignore[misc]
