"""The worker's local tables survive only a clean stop (else they come back from the changelog)."""

from pathlib import Path

from streams.app import CLEAN_STOP, forget_unclean_state


def test_tables_left_by_a_crash_are_dropped(tmp_path: Path) -> None:
    tables = tmp_path / "v1" / "tables" / "patients-0.db"
    tables.mkdir(parents=True)
    assert forget_unclean_state(tmp_path) is True
    assert not (tmp_path / "v1" / "tables").exists()


def test_tables_after_a_clean_stop_are_kept_and_the_mark_is_taken_away(tmp_path: Path) -> None:
    tables = tmp_path / "v1" / "tables" / "patients-0.db"
    tables.mkdir(parents=True)
    (tmp_path / CLEAN_STOP).touch()
    assert forget_unclean_state(tmp_path) is False
    assert tables.exists()
    assert not (tmp_path / CLEAN_STOP).exists()  # a crash of this run will not look clean


def test_a_new_data_dir_has_nothing_to_drop(tmp_path: Path) -> None:
    assert forget_unclean_state(tmp_path) is False
