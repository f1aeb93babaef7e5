import numpy as np
import pytest

from naslung.data.dataset import DatasetError, PreparedDataset


def test_round_trip(tmp_path, tiny_dataset):
    out = tiny_dataset.save(tmp_path / "d")
    back = PreparedDataset.load(out)
    np.testing.assert_array_equal(back.crops, tiny_dataset.crops)
    assert back.labels.tolist() == tiny_dataset.labels.tolist()
    assert back.folds.tolist() == tiny_dataset.folds.tolist()
    assert back.spec == tiny_dataset.spec
    assert back.fingerprint() == tiny_dataset.fingerprint()


def test_missing_directory_names_the_fix(tmp_path):
    with pytest.raises(DatasetError, match="naslung prepare"):
        PreparedDataset.load(tmp_path / "nope")


def test_shape_mismatch_is_rejected(tiny_dataset):
    with pytest.raises(DatasetError, match="shape"):
        PreparedDataset(tiny_dataset.crops[:, :8], tiny_dataset.rows, tiny_dataset.spec, "toy")
