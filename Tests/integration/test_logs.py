"""`--log-format json`: the daemon's log is one JSON object per line, for log shippers, and holds no secret even
at trace level."""
import json
import os

MiB = 1 << 20


def test_json_log_lines_of_a_mount_at_trace_level(server, bucket, mounts):
    mp, cache = mounts.mount(f"s3://{bucket}", None, None, "--log-format", "json", "--log-level", "trace",
                             "--upload-delay", "0")
    data = os.urandom(MiB + 5)
    with open(os.path.join(mp, "a.bin"), "wb") as f:
        f.write(data)
    assert mounts.run("flush", mp).returncode == 0
    with open(os.path.join(mp, "a.bin"), "rb") as f:
        assert f.read() == data
    mounts.unmount(mp)
    lines = open(os.path.join(cache, "ckptfs.log")).read().splitlines()
    assert len(lines) >= 5
    events = []
    for line in lines:
        e = json.loads(line)  # every line is one JSON object
        assert set(e) >= {"time", "level", "logger", "message"}, e
        assert e["time"].endswith("Z") and e["level"] in ("trace", "debug", "info", "notice", "warning", "error", "critical")
        events.append(e)
    assert any(e["message"] == "mounting" and e.get("s3.url") == f"s3://{bucket}" and e.get("mountpoint") == mp for e in events)
    assert any(e["level"] == "debug" and e["message"] == "s3 request" for e in events)
    assert any(e["message"] == "unmount requested (ckptfs unmount or umount): the write-back was drained first" for e in events)
    secret = server.info["secret_key"]
    assert all(secret not in line for line in lines)


def test_check_logs_json_to_stderr_and_rejects_an_unknown_format(server, bucket, mounts):
    r = mounts.run("check", f"s3://{bucket}", "--log-format", "json", "--log-level", "debug")
    assert r.returncode == 0, r.stderr
    assert "credentials:" in r.stdout
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert lines and all(json.loads(l)["logger"].startswith("ckptfs") for l in lines), r.stderr
    r = mounts.run("check", f"s3://{bucket}", "--log-format", "yaml")
    assert r.returncode != 0 and "--log-format must be 'text' or 'json'" in r.stderr
