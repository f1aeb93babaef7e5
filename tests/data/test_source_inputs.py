"""Directory sources refuse a missing or absent --input with a message that says what to give."""
import pytest

from naslung.data.sources import get_source
from naslung.data.sources.base import SourceOptions


@pytest.mark.parametrize("source,holds", [("luna16", "LUNA16"), ("lidc-dicom", "DICOM")])
def test_missing_and_absent_input(tmp_path, source, holds):
    with pytest.raises(ValueError, match=f"--source {source} needs --input DIR.*{holds}"):
        get_source(source)(SourceOptions())
    with pytest.raises(FileNotFoundError, match=f"nope: {source} input directory not found"):
        get_source(source)(SourceOptions(input=tmp_path / "nope"))
