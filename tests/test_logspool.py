"""The spool writer: COPY-ready lines, one writer per file, never an error for the producer."""

import io
import json
import logging
import os
import subprocess
import sys

from server.core import logspool, settings
from tests.conftest import ROOT


def spool_files(directory):
    return sorted(p for p in os.listdir(directory) if p.endswith(logspool.SUFFIX))


def make_handler(tmp_path, max_file=1024 * 1024):
    return logspool.SpoolHandler(str(tmp_path / "spool"), "inst", "prog", max_file)


def emit(handler, message, *args, level=logging.INFO, exc_info=None, **extra):
    record = logging.LogRecord("ayon.t", level, __file__, 1, message, args, exc_info)
    for key, value in extra.items():
        setattr(record, key, value)
    handler.handle(record)


def test_tricky_records_come_back_exactly_through_copy(tmp_path, database):
    handler = make_handler(tmp_path)
    nasty = "tab\there\nnew line\r\\back\\slash \\N é 日本 \0nul \udcff"
    emit(handler, "%s", nasty, detail={"text": nasty, "list": [1, 2.5, None]}, obj=object)
    try:
        raise ValueError("bad\tvalue")
    except ValueError:
        emit(handler, "failed", level=logging.ERROR, exc_info=sys.exc_info())
    emit(handler, "bad args %d", "not a number")
    handler.close()
    (name,) = spool_files(tmp_path / "spool")
    data = (tmp_path / "spool" / name).read_bytes()
    assert data.count(b"\n") == 3
    with database.transaction() as cur:
        cur.copy_expert(logspool.COPY_SQL, io.BytesIO(data))
    rows = database.fetchall("SELECT level, instance, program, pid, logger, message, extras, exc FROM logs")
    assert len(rows) == 3
    first, second, third = rows
    cleaned = nasty.replace("\0", "").replace("\udcff", "?")
    assert first[:6] == ("INFO", "inst", "prog", os.getpid(), "ayon.t", cleaned)
    # jsonb cannot hold NUL either: in extras it becomes the replacement character.
    assert first[6]["detail"] == {"text": nasty.replace("\0", "\ufffd").replace("\udcff", "?"), "list": [1, 2.5, None]}
    assert first[6]["obj"] == str(object)
    assert second[0] == "ERROR" and second[5] == "failed"
    assert 'raise ValueError("bad\\tvalue")' in second[7] and second[7].endswith("ValueError: bad\tvalue")
    assert third[5] == "'bad args %d' % ('not a number',)"


def test_rotation_at_size_and_after_deletion(tmp_path):
    handler = make_handler(tmp_path, max_file=64 * 1024)
    for n in range(400):
        emit(handler, "record %d %s", n, "x" * 500)
    files = spool_files(tmp_path / "spool")
    assert len(files) >= 3
    assert all(os.path.getsize(tmp_path / "spool" / f) < 64 * 1024 + 1024 for f in files)
    # A file dropped by the cap: the writer notices and starts a new one instead of writing into the void.
    deleted = (tmp_path / "spool" / files[-1]).read_bytes().count(b"\n")
    os.unlink(tmp_path / "spool" / files[-1])
    emit(handler, "after the drop")
    newest = spool_files(tmp_path / "spool")[-1]
    assert newest not in files
    assert (tmp_path / "spool" / newest).read_bytes().count(b"after the drop") == 1
    total = sum((tmp_path / "spool" / f).read_bytes().count(b"\n") for f in spool_files(tmp_path / "spool"))
    assert total == 400 - deleted + 1
    handler.close()


def test_held_file_is_not_free_until_its_writer_moves_on(tmp_path):
    handler = make_handler(tmp_path, max_file=64 * 1024)
    emit(handler, "first")
    (first,) = spool_files(tmp_path / "spool")
    path = str(tmp_path / "spool" / first)
    assert not logspool.is_free(path)
    for n in range(200):
        emit(handler, "record %d %s", n, "x" * 500)
    assert logspool.is_free(path)  # rotated away
    current = str(tmp_path / "spool" / spool_files(tmp_path / "spool")[-1])
    assert not logspool.is_free(current)
    handler.close()
    assert logspool.is_free(current)
    assert not logspool.is_free(str(tmp_path / "spool" / "missing.copy"))


def test_forked_child_writes_its_own_file(tmp_path):
    handler = make_handler(tmp_path)
    emit(handler, "parent before")
    pid = os.fork()
    if pid == 0:
        emit(handler, "child")
        os._exit(0)
    os.waitpid(pid, 0)
    emit(handler, "parent after")
    handler.close()
    files = spool_files(tmp_path / "spool")
    assert len(files) == 2
    contents = {f.split("-")[1]: (tmp_path / "spool" / f).read_bytes() for f in files}
    assert contents[str(os.getpid())].count(b"parent") == 2
    assert contents[str(pid)].count(b"\tchild\t") == 1


def test_unwritable_spool_never_reaches_the_producer(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the spool folder should be")
    handler = logspool.SpoolHandler(str(blocker / "spool"), "inst", "prog", 64 * 1024)
    for n in range(5):
        emit(handler, "lost %d", n)
    assert handler.errors == 5


def test_setup_logging_spools_every_record_of_a_process(tmp_path, env):
    code = (
        "import logging\n"
        "from server.core import settings\n"
        "from server.core.logs import setup_logging\n"
        "log = setup_logging('producer', settings.load())\n"
        "log.info('hello %s', 'spool', extra={'n': 7})\n"
        "logging.getLogger('other').warning('second')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert "hello spool" in result.stdout
    directory = logspool.spool_dir(settings.load(env).data_dir)
    (name,) = spool_files(directory)
    assert name.startswith("producer-")
    lines = open(os.path.join(directory, name), "rb").read().decode().splitlines()
    fields = [line.split("\t") for line in lines]
    assert [f[1:4] + f[5:7] for f in fields] == [
        ["INFO", "test", "producer", "ayon.producer", "hello spool"],
        ["WARNING", "test", "producer", "other", "second"],
    ]
    assert json.loads(fields[0][7]) == {"n": 7}
