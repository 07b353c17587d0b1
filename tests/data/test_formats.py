"""Readers: format detection, column roles, time parsing, MovieLens and S3-Rec layouts."""

from __future__ import annotations

import gzip
import json
import re
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest

from seqtwins.data.formats import ReaderOptions, detect_format, read_log
from seqtwins.errors import SeqtwinsError


def _touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("log.csv", "csv"),
        ("log.csv.gz", "csv"),
        ("log.TSV", "tsv"),
        ("log.parquet", "parquet"),
        ("log.jsonl.gz", "jsonl"),
        ("log.ndjson", "jsonl"),
        ("Yelp.txt", "s3rec"),
        ("u.data", "movielens"),
        ("ratings.dat.gz", "movielens"),
    ],
)
def test_detect_format_by_name(tmp_path, name, fmt):
    assert detect_format(_touch(tmp_path / name)) == fmt


def test_detect_format_by_folder(tmp_path):
    _touch(tmp_path / "ml" / "ratings.csv")
    _touch(tmp_path / "ml" / "movies.csv")
    assert detect_format(tmp_path / "ml") == "movielens"
    assert detect_format(tmp_path / "ml" / "ratings.csv") == "movielens"  # movies.csv beside
    assert detect_format(_touch(tmp_path / "plain" / "ratings.csv")) == "csv"
    _touch(tmp_path / "s3" / "Beauty.txt")
    _touch(tmp_path / "s3" / "Beauty_item2attributes.json", "{}")
    assert detect_format(tmp_path / "s3") == "s3rec"
    (tmp_path / "empty").mkdir()
    with pytest.raises(SeqtwinsError, match="cannot tell the format of folder"):
        detect_format(tmp_path / "empty")
    with pytest.raises(SeqtwinsError, match="cannot tell the format"):
        detect_format(_touch(tmp_path / "log.xlsx"))
    with pytest.raises(ValueError, match="format='excel' is unknown"):
        ReaderOptions(format="excel")


def test_time_parsing_epoch_iso_and_offsets(tmp_path):
    times = [
        "1577836800",  # 2020-01-01T00:00:00Z
        "1577836800.9",  # fractional seconds are floored
        "2020-01-01",
        "2020-01-01T00:00:00",
        "2020-01-01 00:00:00",
        "2020-01-01T00:00:00Z",
        "2020-01-01T01:00:00+01:00",
        "2019-12-31T19:00:00.250-05:00",
        "2020-01-01T00:00",
    ]
    f = tmp_path / "log.csv"
    f.write_text("user_id,item_id,timestamp\n" + "".join(f"u,i{k},{t}\n" for k, t in
                                                           enumerate(times)))  # fmt: skip
    log = read_log(f)
    assert log.interactions["time"].to_list() == [1577836800] * len(times)


def test_parquet_datetime_date_and_list_categories(tmp_path):
    aware = datetime(2020, 1, 1, 1, tzinfo=UTC)
    pl.DataFrame(
        {
            "u": ["a", "a"],
            "i": [1, 2],
            "when": [aware, aware],
            "day": [date(2020, 1, 1), date(2020, 1, 2)],
        }
    ).write_parquet(tmp_path / "log.parquet")
    pl.DataFrame({"i": [1, 2], "tags": [["x", " y"], None]}).write_parquet(tmp_path / "it.parquet")
    opts = ReaderOptions(user_col="u", item_col="i", time_col="when",
                         items_file=tmp_path / "it.parquet", categories_col="tags")  # fmt: skip
    log = read_log(tmp_path / "log.parquet", opts)
    assert log.interactions["time"].to_list() == [1577840400] * 2
    assert log.items is not None and log.items["categories"].to_list() == [["x", "y"], []]
    opts2 = ReaderOptions(user_col="u", item_col="i", time_col="day")
    assert read_log(tmp_path / "log.parquet", opts2).interactions["time"].to_list() == [
        1577836800,
        1577923200,
    ]


def test_ids_keep_leading_zeros_and_integers_stay_integers(tmp_path):
    f = tmp_path / "log.csv"
    f.write_text("user_id,item_id\n007,1\n7,2\n")
    log = read_log(f)
    assert log.interactions["user"].dtype == pl.String
    assert log.interactions["user"].to_list() == ["007", "7"]
    assert log.interactions["item"].dtype.is_integer()
    assert "time" not in log.interactions.columns  # no time column: line order


def test_column_roles_usual_names_and_explicit(tmp_path):
    f = tmp_path / "log.csv"
    f.write_text("userId,movieId,rating,timestamp,extra\n1,2,4.5,10,z\n")
    log = read_log(f)
    assert log.interactions.columns == ["user", "item", "time", "rating"]
    with pytest.raises(SeqtwinsError, match=r"no column 'userid' for --user-col.*'userId'"):
        read_log(f, ReaderOptions(user_col="userid"))
    g = tmp_path / "odd.csv"
    g.write_text("who,what\n1,2\n")
    with pytest.raises(SeqtwinsError, match="has no user column.*--user-col.*who, what"):
        read_log(g)
    log = read_log(g, ReaderOptions(user_col="who", item_col="what"))
    assert log.interactions.height == 1


def test_bad_rows_reported_with_line_numbers(tmp_path):
    f = tmp_path / "log.csv"
    f.write_text("user_id,item_id,timestamp,rating\na,x,1,5\na,,2,5\na,y,soon,5\na,z,3,good\n")
    with pytest.raises(SeqtwinsError) as e:
        read_log(f)
    msg = str(e.value)
    assert "3 bad rows" in msg
    assert "line 3: column 'item_id' is empty" in msg
    assert "line 4: column 'timestamp' value 'soon' is not epoch seconds or an ISO-8601" in msg
    assert "line 5: column 'rating' value 'good' is not a number" in msg
    assert "--on-bad-rows skip" in msg and "\n" not in msg
    log = read_log(f, ReaderOptions(on_bad_rows="skip"))
    assert log.bad_rows_skipped == 3 and log.interactions.height == 1


def test_parquet_nulls_reported_by_row(tmp_path):
    pl.DataFrame({"user_id": [1, None, 3], "item_id": [1, 2, None]}).write_parquet(
        tmp_path / "log.parquet"
    )
    with pytest.raises(SeqtwinsError, match="2 bad rows: row 2: column 'user_id' is empty; row 3"):
        read_log(tmp_path / "log.parquet")


def test_jsonl_mixed_types_blank_lines_and_bad_json(tmp_path):
    f = tmp_path / "log.jsonl"
    f.write_text(
        '{"user_id": 1, "item_id": "a", "ts": "2020-01-01"}\n'
        "\n"
        '{"user_id": 1, "item_id": 5, "ts": 1577836801}\n'
        "{not json\n"
    )
    with pytest.raises(SeqtwinsError, match="line 4: none of the columns"):
        read_log(f)
    log = read_log(f, ReaderOptions(on_bad_rows="skip"))
    assert log.interactions["item"].to_list() == ["a", "5"]
    assert log.interactions["time"].to_list() == [1577836800, 1577836801]
    assert log.rows_read == 3 and log.bad_rows_skipped == 1


def test_ml100k_layout(tmp_path):
    d = tmp_path / "ml-100k"
    _touch(d / "u.data", "1\t10\t4\t100\n2\t10\t3\t90\n1\t20\t5\t80\n")
    flags = ["0"] * 19
    flags[1] = flags[5] = "1"  # Action, Comedy
    _touch(d / "u.item", "10|Caf\xe9 (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n"
           "20|B (1996)|01-Jan-1996||http://y|" + "|".join(["0"] * 19) + "\n")  # fmt: skip
    (d / "u.item").write_bytes((d / "u.item").read_text().encode("latin-1"))
    _touch(d / "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
    log = read_log(d)
    assert log.format == "movielens" and log.interactions.height == 3
    assert log.items is not None and log.items["title"][0] == "Caf\xe9 (1995)"
    assert log.items["categories"].to_list() == [["Action", "Comedy"], []]
    assert log.users is not None and log.users.columns == ["user_id", "age", "gender", "occupation"]


def test_ml1m_layout_gzip_latin1_and_bad_row_lines(tmp_path):
    d = tmp_path / "ml-1m"
    d.mkdir()
    (d / "ratings.dat.gz").write_bytes(gzip.compress(b"1::10::5::978300760\n1::20::3::978300761\n"))
    (d / "movies.dat").write_bytes("10::Am\xe9lie (2001)::Comedy|Romance\n20::X::Drama\n".encode(
        "latin-1"))  # fmt: skip
    (d / "users.dat").write_text("1::F::1::10::48067\n")
    log = read_log(d)
    assert log.interactions.to_dicts()[0] == {"user": 1, "item": 10, "time": 978300760,
                                              "rating": 5.0}  # fmt: skip
    assert log.items is not None and log.items["title"][0] == "Am\xe9lie (2001)"
    assert log.items["categories"][0].to_list() == ["Comedy", "Romance"]
    assert log.users is not None and log.users.row(0) == ("1", "F", "1", "10")
    (d / "ratings.dat.gz").write_bytes(gzip.compress(b"1::10::5::978300760\n1::20::3\n"))
    with pytest.raises(SeqtwinsError, match=r"ratings.dat.gz: 1 bad row: line 2: column 'time'"):
        read_log(d)


def test_ml20m_layout_no_genres(tmp_path):
    d = tmp_path / "ml-20m"
    _touch(d / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,3.5,11\n")
    _touch(d / "movies.csv", 'movieId,title,genres\n1,"Toy, Story",A|B\n2,Y,(no genres listed)\n')
    log = read_log(d)
    assert log.items is not None
    assert log.items["categories"].to_list() == [["A", "B"], []]
    assert log.items["title"][0] == "Toy, Story"


def test_s3rec_attributes_empty_lists_and_user_only_lines(tmp_path):
    d = tmp_path / "s3"
    _touch(d / "Toy.txt", "1 3 1 3 2\n2\n\n3 2  1\n")
    _touch(d / "Toy_item2attributes.json", json.dumps({"1": [5, 6, 5], "2": [], "3": [7]}))
    log = read_log(d)
    assert log.format == "s3rec" and log.empty_users == 1 and log.rows_read == 3
    assert log.interactions["user"].to_list() == [1, 1, 1, 1, 3, 3]
    assert log.interactions["item"].to_list() == [3, 1, 3, 2, 2, 1]
    assert log.items is not None
    cats = dict(zip(log.items["item_id"], log.items["categories"].to_list(), strict=True))
    assert cats == {"1": ["5", "6"], "2": [], "3": ["7"]}


def test_s3rec_invalid_json_names_line(tmp_path):
    d = tmp_path / "s3"
    _touch(d / "Toy.txt", "1 1 2\n")
    _touch(d / "Toy_item2attributes.json", '{"1": [1],\n "2": [2,]}')
    with pytest.raises(SeqtwinsError, match="line 2, column .*invalid JSON"):
        read_log(d)


def test_tables_only_for_generic_formats(tmp_path):
    d = tmp_path / "s3"
    _touch(d / "Toy.txt", "1 1 2\n")
    with pytest.raises(SeqtwinsError, match="--items/--users apply to"):
        read_log(d, ReaderOptions(items_file=tmp_path / "x.csv"))


def test_user_table_duplicates_and_categories_text(tmp_path):
    f = _touch(tmp_path / "log.csv", "user_id,item_id\nu1,a\nu1,b\n")
    _touch(tmp_path / "users.csv", "user_id,age\nu1,3\nu1,4\n")
    with pytest.raises(SeqtwinsError, match="user id 'u1' appears more than once"):
        read_log(f, ReaderOptions(users_file=tmp_path / "users.csv"))
    _touch(tmp_path / "items.tsv", "item_id\tcats\na\tx, y\nb\t\n")
    log = read_log(f, ReaderOptions(items_file=tmp_path / "items.tsv", categories_col="cats"))
    assert log.items is not None and log.items["categories"].to_list() == [["x", "y"], []]


OVERFLOW = {
    # name: (file name, content, text the one-line message must contain)
    "timestamp beyond int64": (
        "log.csv", "user_id,item_id,timestamp\na,x,1\na,y,99999999999999999999\n",
        "line 3: column 'timestamp' value '99999999999999999999' is not epoch seconds"),
    "negative timestamp beyond int64": (
        "log.csv", "user_id,item_id,timestamp\na,x,-99999999999999999999\na,y,1\n",
        "line 2: column 'timestamp' value '-99999999999999999999' is not epoch seconds"),
    "float timestamp beyond int64": (
        "log.csv", "user_id,item_id,timestamp\na,x,1.5e30\na,y,1.5\n",
        "line 2: column 'timestamp' value '1.5e+30' is not epoch seconds"),
    "json timestamp beyond int64": (
        "log.jsonl", '{"user_id": "a", "item_id": "x", "timestamp": 99999999999999999999}\n'
        '{"user_id": "a", "item_id": "y", "timestamp": 5}\n',
        "line 1: column 'timestamp' value '99999999999999999999' is not epoch seconds"),
    "rating beyond float32": (
        "log.csv", "user_id,item_id,rating\na,x,1e39\na,y,3\n",
        "line 2: column 'rating' value '1e+39' is not a number"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(OVERFLOW))
def test_values_beyond_the_stored_types_are_bad_rows(tmp_path, case):
    name, content, expected = OVERFLOW[case]
    f = tmp_path / name
    f.write_text(content)
    with pytest.raises(SeqtwinsError, match=re.escape(expected)) as e:
        read_log(f)
    assert "\n" not in str(e.value)
    assert read_log(f, ReaderOptions(on_bad_rows="skip")).bad_rows_skipped == 1


def test_uint64_timestamp_in_parquet_is_a_bad_row(tmp_path):
    f = tmp_path / "log.parquet"
    times = pl.Series([2**64 - 1, 5], dtype=pl.UInt64)
    pl.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": times}).write_parquet(f)
    with pytest.raises(SeqtwinsError, match="row 1: column 'timestamp' value '18446"):
        read_log(f)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"user_id": {"x": 1}, "item_id": 1}', "column 'user_id' holds Struct"),
        ('{"user_id": 1, "item_id": [1]}', "column 'item_id' holds List"),
    ],
)
def test_nested_ids_are_one_line(tmp_path, line, message):
    f = tmp_path / "log.jsonl"
    f.write_text(line + "\n")
    with pytest.raises(SeqtwinsError, match=re.escape(message)) as e:
        read_log(f)
    assert str(e.value).startswith(str(f)) and "\n" not in str(e.value)
