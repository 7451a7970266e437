from __future__ import annotations

import pytest

from airflow_provider_walthrottle.wal.segments import (
    WalFileKind,
    parse_lsn,
    parse_wal_file_name,
    segment_file_name,
    segment_of_lsn,
    segments_per_log_id,
)

MB = 1024 * 1024


@pytest.mark.parametrize(
    ("size", "expected"),
    [(1 * MB, 4096), (16 * MB, 256), (64 * MB, 64), (1024 * MB, 4)],
)
def test_segments_per_log_id_depends_on_segment_size(size, expected):
    assert segments_per_log_id(size) == expected


@pytest.mark.parametrize("size", [0, -16 * MB, 3 * MB])
def test_segments_per_log_id_rejects_impossible_sizes(size):
    with pytest.raises(ValueError, match="power of two"):
        segments_per_log_id(size)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0/0", 0), ("0/3000000", 0x3000000), ("16/B374D848", 0x16 << 32 | 0xB374D848), ("1/0", 1 << 32)],
)
def test_parse_lsn(text, expected):
    assert parse_lsn(text) == expected


@pytest.mark.parametrize("text", ["", "16", "16/", "G/0", "1/2/3", "123456789/0"])
def test_parse_lsn_rejects_garbage(text):
    with pytest.raises(ValueError, match="is not an LSN"):
        parse_lsn(text)


@pytest.mark.parametrize(
    ("name", "kind", "timeline", "segment_at_64mb"),
    [
        ("000000010000000000000003", WalFileKind.SEGMENT, 1, 3),
        # across a log-id boundary with 64 MB segments: 64 segments per log id
        ("000000010000000100000002", WalFileKind.SEGMENT, 1, 66),
        ("000000010000000000000003.partial", WalFileKind.PARTIAL, 1, 3),
        ("000000010000000000000002.00000028.backup", WalFileKind.BACKUP_HISTORY, 1, 2),
        ("00000002.history", WalFileKind.TIMELINE_HISTORY, 2, None),
    ],
)
def test_parse_wal_file_name(name, kind, timeline, segment_at_64mb):
    parsed = parse_wal_file_name(name)
    assert parsed.kind is kind
    assert parsed.timeline == timeline
    assert parsed.segment_number(64 * MB) == segment_at_64mb


@pytest.mark.parametrize(
    "name", ["", "00000001000000000000000", "000000010000000000000003.ready", "0000000g.history"]
)
def test_parse_wal_file_name_rejects_other_names(name):
    with pytest.raises(ValueError, match="is not the name of a WAL"):
        parse_wal_file_name(name)


@pytest.mark.parametrize(
    ("lsn", "size", "name"),
    [
        ("0/3000000", 16 * MB, "000000010000000000000003"),
        ("0/2FFFFFF", 16 * MB, "000000010000000000000002"),
        ("1/4000000", 64 * MB, "000000010000000100000001"),
        ("0/FFFFFFFF", 1 * MB, "000000010000000000000FFF"),
    ],
)
def test_segment_file_name_matches_pg_walfile_name(lsn, size, name):
    assert segment_file_name(1, segment_of_lsn(parse_lsn(lsn), size), size) == name
