"""read_checkpoint (torch zip and legacy, safetensors, npz; refusing unsafe pickles) and pretrained()."""

import collections
import hashlib
import http.server
import io
import os
import pickle
import threading
import zipfile

import numpy as np
import pytest

from adaptgrad_jax import weights

torch = pytest.importorskip("torch")


def _reference_state():
  gen = torch.Generator().manual_seed(0)
  base = torch.randn(6, 5, generator=gen)
  state = collections.OrderedDict()
  state["conv.weight"] = torch.randn(4, 3, 3, 3, generator=gen)
  state["transposed"] = base.t()  # non-contiguous
  state["strided"] = base[1::2, ::2]  # non-contiguous, storage offset
  state["shares_storage"] = base[2:]  # same storage as above, offset
  state["half"] = torch.randn(7, generator=gen).half()
  state["half_slice"] = torch.randn(4, 6, generator=gen).half()[:, 1:4]
  state["bfloat16"] = torch.randn(3, 2, generator=gen).bfloat16()
  state["double"] = torch.randn(2, 2, generator=gen).double()
  state["bn.num_batches_tracked"] = torch.tensor(17)
  state["bytes"] = torch.arange(10, dtype=torch.uint8)
  state["mask"] = torch.tensor([True, False, True])
  state["scalar"] = torch.tensor(2.5)
  state["empty"] = torch.zeros(0, 3)
  state["param"] = torch.nn.Parameter(torch.ones(2, 2))
  return state


def _assert_matches(read, state):
  assert list(read) == list(state)
  for name, tensor in state.items():
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
      assert str(read[name].dtype) == "bfloat16"
      np.testing.assert_array_equal(read[name].astype(np.float32), tensor.float().numpy())
    else:
      assert read[name].dtype == tensor.numpy().dtype, name
      np.testing.assert_array_equal(read[name], tensor.numpy(), err_msg=name)
    assert read[name].flags.c_contiguous


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_save_round_trip(tmp_path, zip_format):
  state = _reference_state()
  path = tmp_path / "model.pth"
  torch.save(state, path, _use_new_zipfile_serialization=zip_format)
  with open(path, "rb") as f:
    assert f.read(2) == (b"PK" if zip_format else b"\x80\x02")
  _assert_matches(weights.read_checkpoint(path), state)


def test_nested_checkpoint_is_flattened(tmp_path):
  path = tmp_path / "ckpt.pt"
  torch.save({"state_dict": {"fc.weight": torch.ones(2, 3)}, "epoch": 3, "layers": [torch.zeros(1)]}, path)
  read = weights.read_checkpoint(path)
  assert sorted(read) == ["layers.0", "state_dict.fc.weight"]


def test_module_state_dict_loads_into_our_model(tmp_path):
  from flax import nnx

  from adaptgrad_jax import models

  ref = torch.nn.Module()
  ref.fc1, ref.fc2 = torch.nn.Linear(784, 200), torch.nn.Linear(200, 10)
  path = tmp_path / "mlp.pth"
  torch.save(ref.state_dict(), path, _use_new_zipfile_serialization=False)
  model = models.mlp(weights=path, rngs=nnx.Rngs(0))
  x = np.random.default_rng(0).uniform(size=(2, 784)).astype(np.float32)
  expected = ref.fc2(torch.relu(ref.fc1(torch.tensor(x)))).detach().numpy()
  np.testing.assert_allclose(model(x), expected, rtol=1e-5, atol=1e-6)


def test_safetensors(tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  safetensors_torch = pytest.importorskip("safetensors.torch")
  arrays = {
    "a": np.arange(12, dtype=np.float32).reshape(3, 4),
    "b": np.array([1, -2], np.int64),
    "c": np.array([True, False]),
    "d": np.ones((2, 0), np.float16),
  }
  safetensors_numpy.save_file(arrays, tmp_path / "w.safetensors", metadata={"format": "np"})
  read = weights.read_checkpoint(tmp_path / "w.safetensors")
  assert sorted(read) == sorted(arrays)
  for name, array in arrays.items():
    assert read[name].dtype == array.dtype
    np.testing.assert_array_equal(read[name], array)
  safetensors_torch.save_file({"x": torch.tensor([1.5, -2.0]).bfloat16()}, tmp_path / "bf.safetensors")
  np.testing.assert_array_equal(weights.read_checkpoint(tmp_path / "bf.safetensors")["x"].astype(np.float32), [1.5, -2])


def test_npz(tmp_path):
  arrays = {"features.0.weight": np.ones((2, 3, 1, 1), np.float32), "n": np.arange(3)}
  np.savez(tmp_path / "w.npz", **arrays)
  read = weights.read_checkpoint(tmp_path / "w.npz")
  for name, array in arrays.items():
    np.testing.assert_array_equal(read[name], array)


class _RunsCommand:
  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return os.system, (self.command,)


@pytest.mark.parametrize("container", ["legacy", "zip", "nested"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, container):
  marker = tmp_path / "pwned"
  payload = _RunsCommand(f"touch {marker}")
  if container == "nested":  # hidden inside an otherwise valid state dict
    payload = collections.OrderedDict([("fc.weight", [1.0]), ("evil", payload)])
  data = pickle.dumps(payload, protocol=2)
  assert b"system" in data
  path = tmp_path / "evil.pth"
  if container == "zip":
    with zipfile.ZipFile(path, "w") as archive:
      archive.writestr("evil/data.pkl", data)
      archive.writestr("evil/version", "3\n")
  else:
    path.write_bytes(data)
  with pytest.raises(weights.UnsafeCheckpointError, match=r"refused global (posix|nt|os)\.system") as info:
    weights.read_checkpoint(path)
  assert str(path) in str(info.value)
  assert not marker.exists()


def test_refuses_other_globals_even_builtins(tmp_path):
  path = tmp_path / "eval.pth"
  path.write_bytes(b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1q\x00\x85R.")
  with pytest.raises(weights.UnsafeCheckpointError, match=r"refused global builtins\.eval"):
    weights.read_checkpoint(path)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_checkpoint_gives_a_clear_error(tmp_path, zip_format, keep):
  path = tmp_path / "model.pth"
  torch.save(_reference_state(), path, _use_new_zipfile_serialization=zip_format)
  data = path.read_bytes()
  path.write_bytes(data[: int(len(data) * keep)])
  with pytest.raises(weights.CheckpointError, match=str(path)):
    weights.read_checkpoint(path)


def test_truncated_safetensors_and_npz(tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  safetensors_numpy.save_file({"a": np.ones((10, 10), np.float32)}, tmp_path / "w.safetensors")
  np.savez(tmp_path / "w.npz", a=np.ones((10, 10)))
  for name in ["w.safetensors", "w.npz"]:
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(weights.CheckpointError, match="truncated"):
      weights.read_checkpoint(path)


def test_out_of_bounds_strides_are_refused(tmp_path):
  # A hand-made zip checkpoint whose tensor claims more elements than its storage holds.
  buffer = io.BytesIO()
  pickler_data = (
    b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\n"
    b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQK\x00K\x10\x85K\x01\x85\x89ccollections\nOrderedDict\n)Rtq\x00R."
  )
  with zipfile.ZipFile(buffer, "w") as archive:
    archive.writestr("m/data.pkl", pickler_data)
    archive.writestr("m/data/0", np.ones(4, np.float32).tobytes())
  path = tmp_path / "bad.pth"
  path.write_bytes(buffer.getvalue())
  with pytest.raises(weights.CheckpointError, match="reaches byte 64 of storage 0, which holds 16"):
    weights.read_checkpoint(path)


def test_unknown_format_and_missing_file(tmp_path):
  path = tmp_path / "notes.pth"
  path.write_text("hello")
  with pytest.raises(weights.CheckpointError, match="unknown checkpoint format"):
    weights.read_checkpoint(path)
  with pytest.raises(FileNotFoundError):
    weights.read_checkpoint(tmp_path / "absent.pth")


# ---------------------------------------------------------------------------
# pretrained() against a local HTTP server (never the internet).


class _Server:
  """Serves one payload on 127.0.0.1 with Range support; can cut the first response short."""

  def __init__(self, payload):
    self.payload, self.cut_after, self.ranges = payload, None, []
    outer = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):  # noqa: N802
        start = 0
        header = self.headers.get("Range")
        outer.ranges.append(header)
        if header:
          start = int(header.removeprefix("bytes=").split("-")[0])
          self.send_response(206)
          self.send_header("Content-Range", f"bytes {start}-{len(outer.payload) - 1}/{len(outer.payload)}")
        else:
          self.send_response(200)
        body = outer.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if outer.cut_after is not None:
          body, outer.cut_after = body[: outer.cut_after], None
          self.wfile.write(body)
          self.wfile.flush()
          self.close_connection = True
          return
        self.wfile.write(body)

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    self.thread.start()

  def url(self, name):
    return f"http://127.0.0.1:{self.httpd.server_address[1]}/models/{name}"

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()
    self.thread.join()


@pytest.fixture
def server():
  payload = np.random.default_rng(0).bytes(300_000)
  srv = _Server(payload)
  yield srv
  srv.close()


def _visible(directory):
  """The files a user sees: the lock and a resumable partial download are hidden dotfiles."""
  return sorted(n for n in os.listdir(directory) if not n.startswith("."))


def _name(payload, stem="resnet50"):
  return f"{stem}-{hashlib.sha256(payload).hexdigest()[:8]}.pth"


def test_pretrained_downloads_verifies_and_caches(server, tmp_path):
  name = _name(server.payload)
  path = weights.pretrained("resnet50", url=server.url(name), cache_dir=tmp_path, progress=False)
  assert path == tmp_path / name and path.read_bytes() == server.payload
  assert _visible(tmp_path) == [name]
  again = weights.pretrained("resnet50", url=server.url(name), cache_dir=tmp_path, progress=False)
  assert again == path and len(server.ranges) == 1  # cached: no second request


def test_pretrained_hash_mismatch_leaves_no_file(server, tmp_path):
  name = "resnet50-00000000.pth"
  with pytest.raises(ValueError, match="expected 00000000"):
    weights.pretrained("resnet50", url=server.url(name), cache_dir=tmp_path, progress=False)
  assert _visible(tmp_path) == [] and not [n for n in os.listdir(tmp_path) if n.endswith('.download')]


def test_pretrained_resumes_an_interrupted_download(server, tmp_path):
  name = _name(server.payload)
  server.cut_after = 100_000
  with pytest.raises(OSError):
    weights.pretrained("x", url=server.url(name), cache_dir=tmp_path, progress=False)
  assert not (tmp_path / name).exists()  # no half file under the final name
  assert (tmp_path / f".{name}.partial").stat().st_size == 100_000
  path = weights.pretrained("x", url=server.url(name), cache_dir=tmp_path, progress=False)
  assert server.ranges == [None, "bytes=100000-"]
  assert path.read_bytes() == server.payload and _visible(tmp_path) == [name]


def test_pretrained_file_url_and_env_cache(tmp_path, monkeypatch):
  payload = b"weights" * 1000
  source = tmp_path / "src" / _name(payload, "vgg16")
  source.parent.mkdir()
  source.write_bytes(payload)
  monkeypatch.setenv("ADAPTGRAD_JAX_CACHE", str(tmp_path / "cache"))
  path = weights.pretrained("vgg16", url=source.as_uri(), progress=False)
  assert path == tmp_path / "cache" / source.name and path.read_bytes() == payload
  assert weights.default_cache_dir() == tmp_path / "cache"


def test_pretrained_argument_errors(tmp_path):
  with pytest.raises(ValueError, match="name='resnet9' has no known weights"):
    weights.pretrained("resnet9", cache_dir=tmp_path)
  with pytest.raises(ValueError, match="no hash prefix"):
    weights.pretrained("mine", url="http://127.0.0.1:9/model.pth", cache_dir=tmp_path)
  assert set(weights.TORCHVISION_URLS) >= {"vgg16", "resnet50", "inception_v3", "vgg19_bn", "resnet152"}
  assert weights.TORCHVISION_URLS["resnet50"].endswith("resnet50-0676ba61.pth")


def test_load_state_dict_refuses_lossy_casts_and_names_bad_keys():
  from flax import nnx
  from adaptgrad_jax import models
  model = models.mlp(rngs=nnx.Rngs(0))
  state = models.state_dict_from_model(model)
  before = np.asarray(model.fc1.kernel[...]).copy()
  with pytest.raises(TypeError, match=r"state_dict has the key 3 of type int; keys must be torch parameter names"):
    models.load_state_dict(model, {**state, 3: state["fc1.bias"]})
  huge = state["fc1.weight"].astype(np.float64)
  huge[0, 0] = 1e300
  complex_bias = state["fc2.bias"] * (1 + 1j)
  with pytest.raises(ValueError, match=r"(?s)cannot hold \(2\).*fc1\.weight: 1 finite float64 value\(s\) \(e\.g\. 1e\+300\)"
                                      r" overflow to inf in float32.*fc2\.bias: complex.*imaginary part"):
    models.load_state_dict(model, {**state, "fc1.weight": huge, "fc2.bias": complex_bias})
  np.testing.assert_array_equal(np.asarray(model.fc1.kernel[...]), before)  # nothing copied
  # Casts that only round are fine: float64 in, float32 model.
  models.load_state_dict(model, {k: v.astype(np.float64) * 2 for k, v in state.items()})
  np.testing.assert_allclose(np.asarray(model.fc1.kernel[...]), before * 2, rtol=1e-7)
