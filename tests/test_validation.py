"""The host memory a batch is checked against: physical memory, or the cgroup
(container) limit found through the process's mounts."""

import os

import pytest

from configs import default
from resnet_ln.train import validation
from resnet_ln.train.validation import ConfigError

NO_LIMIT_V1 = "9223372036854771712\n"


def write_files(root, files):
  for path, text in files.items():
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
      (root / path).write_bytes(text)
    else:
      (root / path).write_text(text)


def mount_line(mount_root, mount_point, filesystem, options):
  return f"35 31 0:32 {mount_root} {mount_point} rw,relatime shared:9 - {filesystem} cgroup {options}"


def memory_limit(tmp_path, membership, mounts, files):
  """cgroup_memory_limit on a fake tree: `mounts` are (kind, root in the
  hierarchy, mount point under tmp_path/fs), `files` are under tmp_path/fs."""
  lines = [mount_line(root, tmp_path / "fs" / point,
                      "cgroup2" if kind == "v2" else "cgroup",
                      "rw" if kind == "v2" else f"rw,{kind}")
           for kind, root, point in mounts]
  write_files(tmp_path, {"cgroup": membership, "mountinfo": "\n".join(lines) + "\n",
                         **{f"fs/{path}": text for path, text in files.items()}})
  return validation.cgroup_memory_limit(str(tmp_path / "cgroup"), str(tmp_path / "mountinfo"))


V2 = [("v2", "/", "unified")]
V1 = [("memory", "/", "memory")]


@pytest.mark.parametrize("membership, mounts, files, expected", [
    # v2: the lowest limit on the way up from the process's own cgroup.
    ("0::/jobs/run", V2, {"unified/jobs/memory.max": "8589934592\n",
                          "unified/jobs/run/memory.max": "max\n"}, 8 * 2**30),
    # v1 with the memory controller alone or beside others; the v1 "no limit" value.
    ("12:cpu,memory:/a", [("cpu,memory", "/", "memory")],
     {"memory/a/memory.limit_in_bytes": "1073741824\n",
      "memory/memory.limit_in_bytes": NO_LIMIT_V1}, 2**30),
    ("4:memory:/a", V1, {"memory/a/memory.limit_in_bytes": NO_LIMIT_V1}, None),
    # A container's own cgroup mounted at the mount point (its root in the
    # hierarchy is the process's path): the mount point's limit counts, and a
    # child cgroup that happens to repeat the path's names does not.
    ("9:pids:/docker/abc\n4:memory:/docker/abc\n0::/docker/abc", [("memory", "/docker/abc", "memory")],
     {"memory/memory.limit_in_bytes": "2147483648\n",
      "memory/docker/abc/memory.limit_in_bytes": "1048576\n"}, 2 * 2**30),
    # A mount that shows another part of the hierarchy says nothing of this process.
    ("0::/jobs/run", [("v2", "/other", "unified")], {"unified/memory.max": "1048576\n"}, None),
    # Hybrid: v1's memory controller and v2 both mounted; the lower limit wins.
    ("4:memory:/a\n0::/a", V1 + V2, {"memory/a/memory.limit_in_bytes": "4294967296\n",
                                     "unified/a/memory.max": "3221225472\n"}, 3 * 2**30),
    # The memory hierarchy is not mounted, or it holds no limit file.
    ("4:memory:/a", V2, {"memory/a/memory.limit_in_bytes": "1048576\n"}, None),
    ("0::/", V2, {}, None),
    ("0::/", V2, {"unified/memory.max": "max\n"}, None),
    # Unreadable limits are skipped: non-ASCII digits, bytes that are not UTF-8, junk.
    ("0::/a/b", V2, {"unified/a/b/memory.max": "\u00b2\u00b3\n", "unified/a/memory.max": b"\xff\xfe1",
                     "unified/memory.max": "1048576\n"}, 2**20),
    ("0::/a", V2, {"unified/a/memory.max": "-1\n"}, None),
])
def test_the_memory_limit_of_the_process_cgroup_is_found(tmp_path, membership, mounts, files,
                                                         expected):
  assert memory_limit(tmp_path, membership, mounts, files) == expected


def test_malformed_membership_and_mount_lines_are_skipped(tmp_path):
  membership = "garbage\n\n4:memory\n0::/a"
  write_files(tmp_path, {"cgroup": membership, "fs/unified/a/memory.max": "1048576\n",
                         "mountinfo": "\n".join([
                             "not a mount line",
                             "35 31 0:32 / - cgroup2",  # the fields before " - " cut short
                             mount_line("/", tmp_path / "fs" / "unified", "cgroup2", "rw"),
                         ]) + "\n"})
  assert validation.cgroup_memory_limit(str(tmp_path / "cgroup"),
                                        str(tmp_path / "mountinfo")) == 2**20


def test_a_mount_point_with_a_space_is_unescaped(tmp_path):
  point = tmp_path / "fs" / "cgroup v2"
  write_files(tmp_path, {"cgroup": "0::/", "fs/cgroup v2/memory.max": "1048576\n",
                         "mountinfo": mount_line("/", str(point).replace(" ", "\\040"), "cgroup2",
                                                 "rw") + "\n"})
  assert validation.cgroup_memory_limit(str(tmp_path / "cgroup"),
                                        str(tmp_path / "mountinfo")) == 2**20


def test_no_membership_or_mount_table_means_no_limit(tmp_path):
  assert memory_limit(tmp_path, "0::/", V2, {"unified/memory.max": "1048576\n"}) == 2**20
  assert validation.cgroup_memory_limit(str(tmp_path / "none"), str(tmp_path / "mountinfo")) is None
  assert validation.cgroup_memory_limit(str(tmp_path / "cgroup"), str(tmp_path / "none")) is None


def test_host_memory_is_the_lower_of_physical_memory_and_the_cgroup_limit(monkeypatch):
  physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  monkeypatch.setattr(validation, "cgroup_memory_limit", lambda: physical * 2)
  assert validation.host_memory() == (physical, "memory")
  monkeypatch.setattr(validation, "cgroup_memory_limit", lambda: None)
  assert validation.host_memory() == (physical, "memory")
  monkeypatch.setattr(validation, "cgroup_memory_limit", lambda: physical // 2)
  assert validation.host_memory() == (physical // 2, "memory limit of its container (cgroup)")


def test_a_batch_is_checked_against_the_containers_memory_limit(monkeypatch):
  config = default.get_config()
  config.batch_size, config.eval_batch_size, config.image_size = 1024, 64, 128
  needed = 1024 * 128 * 128 * 3 * 4  # 192 MiB of float32 images.
  monkeypatch.setattr(validation, "cgroup_memory_limit", lambda: needed // 2)
  with pytest.raises(ConfigError, match=r"config.batch_size=1024 is invalid: one batch of "
                     r"128x128x3 inputs takes 0.2 GiB on each host, more than the 0.1 GiB memory "
                     r"limit of its container \(cgroup\)\. Lower config.batch_size, or "
                     r"config.image_size \(now 128\)\."):
    validation.check_batches_fit_host(config, (128, 128, 3))
  monkeypatch.setattr(validation, "cgroup_memory_limit", lambda: needed)
  validation.check_batches_fit_host(config, (128, 128, 3))
