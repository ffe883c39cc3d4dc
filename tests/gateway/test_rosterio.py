"""Roster reading (ISS-1 students, ISS-6 staff, MEAL-2 meal list) and export writing (ISS-2).

Every fixture file is generated in ``tmp_path``; nothing binary is committed.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from openpyxl import Workbook, load_workbook

from gateway.rosterio import HEADER_ROW, RosterResult, read_roster, write_table
from protocol.cards.identity import IdDocType, make_national_id
from protocol.types import HolderCategory

STUDENT_HEADERS_ZH = ["姓名", "学号", "学院", "班级", "身份证号", "照片编号", "有效期"]
STUDENT_HEADERS_EN = ["name", "student_number", "college", "class", "national_id", "photo"]


def nid(i: int) -> str:
    """A distinct valid synthetic national ID per ``i`` (0 <= i < 999_000)."""
    region = f"{110101 + i // 1000}"
    return make_national_id(region, date(2005, 1, 1) + timedelta(days=i % 3000), i % 1000)


def write_xlsx(path: Path, rows: Sequence[Any]) -> Path:
    """A normal (not write-only) workbook: number cells, gaps, blank rows as users make them."""
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    for r, row in enumerate(rows, start=1):
        for c, value in enumerate(row, start=1):
            if value is not None:
                ws.cell(row=r, column=c, value=value)
    wb.save(path)
    return path


def write_csv(path: Path, rows: Sequence[Any], *, encoding: str, delimiter: str = ",") -> Path:
    with path.open("w", encoding=encoding, newline="") as fh:
        csv.writer(fh, delimiter=delimiter).writerows(rows)
    return path


def student(i: int, **over: object) -> list[object]:
    base: dict[str, object] = {
        "name": ["张三", "欧阳娜娜", "李四", "王小明"][i % 4],
        "number": f"2025{i:05d}",
        "college": "计算机学院",
        "class": "计科2501",
        "nid": nid(i),
        "photo": f"P{i:05d}",
        "valid": "2029-07-31",
    }
    base.update(over)
    keys = ("name", "number", "college", "class", "nid", "photo", "valid")
    return [base[k] for k in keys]


def reasons(result: RosterResult) -> list[tuple[int, str | None, str]]:
    return [(e.row_number, e.column, e.reason) for e in result.errors]


class TestStudentXlsx:
    def test_reads_rows_with_file_row_numbers_and_skips_blank_rows(self, tmp_path: Path) -> None:
        # ISS-1: admitted-student list.
        rows: list[Any] = [STUDENT_HEADERS_ZH, student(0), [], student(1)]
        rows += [[None, "  ", None], student(2)]
        path = write_xlsx(tmp_path / "students.xlsx", rows)
        result = read_roster(path, "student")
        assert result.ok, reasons(result)
        assert [r.row_number for r in result.rows] == [2, 4, 6]
        assert result.data_rows == 3
        first = result.rows[0]
        assert first.name == "张三"
        assert first.student_number == "202500000"
        assert first.college == "计算机学院"
        assert first.class_name == "计科2501"
        assert first.national_id == nid(0)
        assert first.photo == "P00000"
        assert first.valid_until == date(2029, 7, 31)
        assert first.staff_number is None
        assert first.meal_quota is None

    def test_numeric_national_id_cell_is_an_error(self, tmp_path: Path) -> None:
        good = nid(1)
        rows = [
            STUDENT_HEADERS_ZH,
            student(0, nid=int(nid(0)[:17] + "0")),  # an 18-digit number cell
            student(1, nid=1.10105194912310e17),  # what Excel really stores
            student(2, nid=good[:17] + good[17].lower()),  # lowercase x / any text is fine
        ]
        path = write_xlsx(tmp_path / "numeric.xlsx", rows)
        result = read_roster(path, "student")
        assert reasons(result)[:2] == [
            (2, "身份证号", "身份证号须为文本格式 / national ID must be a text cell"),
            (3, "身份证号", "身份证号须为文本格式 / national ID must be a text cell"),
        ]
        assert [r.row_number for r in result.rows] == [4]
        assert result.bad_row_numbers == [2, 3]

    def test_integer_student_number_converted_exactly(self, tmp_path: Path) -> None:
        rows = [STUDENT_HEADERS_ZH, student(0, number=2025000123), student(1, number=2025000124.0)]
        result = read_roster(write_xlsx(tmp_path / "n.xlsx", rows), "student")
        assert result.ok, reasons(result)
        assert [r.student_number for r in result.rows] == ["2025000123", "2025000124"]

    def test_too_long_numeric_student_number_refused(self, tmp_path: Path) -> None:
        rows = [STUDENT_HEADERS_ZH, student(0, number=12345678901234567)]
        result = read_roster(write_xlsx(tmp_path / "n.xlsx", rows), "student")
        assert reasons(result) == [
            (2, "学号", "学号须为文本格式 / student number must be a text cell")
        ]

    def test_date_cells_and_text_dates(self, tmp_path: Path) -> None:
        rows = [
            STUDENT_HEADERS_ZH,
            student(0, valid=datetime(2029, 7, 31)),
            student(1, valid="2029/7/31"),
            student(2, valid="20290731"),
            student(3, valid=None),
            student(4, valid="next summer"),
            student(5, valid="2029-02-30"),
        ]
        result = read_roster(write_xlsx(tmp_path / "d.xlsx", rows), "student")
        assert [r.valid_until for r in result.rows] == [date(2029, 7, 31)] * 3 + [None]
        assert [(e.row_number, e.column) for e in result.errors] == [(6, "有效期"), (7, "有效期")]
        assert "valid-until must be a date" in result.errors[0].reason

    def test_bad_national_ids_reported_per_row(self, tmp_path: Path) -> None:
        wrong_check = nid(1)[:17] + ("0" if nid(1)[17] != "0" else "1")
        rows = [
            STUDENT_HEADERS_ZH,
            student(0),
            student(1, nid=wrong_check),
            student(2, nid="110105491231002"),
            student(3, nid=None),
        ]
        result = read_roster(write_xlsx(tmp_path / "ids.xlsx", rows), "student")
        assert [r.row_number for r in result.rows] == [2]
        errs = reasons(result)
        assert errs[0] == (3, "身份证号", "身份证号校验位错误 / national ID check digit wrong")
        assert errs[1][0] == 4
        assert "15" in errs[1][2]
        assert errs[2] == (5, "身份证号", "身份证号为空 / national ID is empty")

    def test_duplicates_reported_on_later_row_naming_earlier(self, tmp_path: Path) -> None:
        rows = [
            STUDENT_HEADERS_ZH,
            student(0),
            student(1),
            student(2, number="202500000"),  # same student number as row 2
            student(3, nid=nid(1)),  # same national ID as row 3
            student(4, number="202500001", nid=nid(0)),  # both
        ]
        result = read_roster(write_xlsx(tmp_path / "dup.xlsx", rows), "student")
        assert [r.row_number for r in result.rows] == [2, 3]
        assert reasons(result) == [
            (4, "学号", "学号与第2行重复 / student number duplicates row 2"),
            (5, "身份证号", "身份证号与第3行重复 / national ID duplicates row 3"),
            (6, "学号", "学号与第3行重复 / student number duplicates row 3"),
            (6, "身份证号", "身份证号与第2行重复 / national ID duplicates row 2"),
        ]

    def test_duplicate_found_even_when_earlier_row_is_bad(self, tmp_path: Path) -> None:
        rows = [STUDENT_HEADERS_ZH, student(0, name=None), student(1, number="202500000")]
        result = read_roster(write_xlsx(tmp_path / "dup2.xlsx", rows), "student")
        assert result.rows == []
        assert reasons(result) == [
            (2, "姓名", "姓名为空 / name is empty"),
            (3, "学号", "学号与第2行重复 / student number duplicates row 2"),
        ]

    def test_missing_column_is_a_file_level_error(self, tmp_path: Path) -> None:
        headers = [h for h in STUDENT_HEADERS_ZH if h != "身份证号"]
        rows = [headers, student(0)[:4] + student(0)[5:]]
        result = read_roster(write_xlsx(tmp_path / "missing.xlsx", rows), "student")
        assert result.rows == []
        assert not result.ok
        assert result.file_errors == result.errors
        assert reasons(result) == [
            (HEADER_ROW, "身份证号/national ID", "缺少“身份证号”列 / missing column: national ID")
        ]

    def test_name_checks(self, tmp_path: Path) -> None:
        rows = [
            STUDENT_HEADERS_ZH,
            student(0, name="  张  三 "),
            student(1, name="张" * 65),
            student(2, name="张3"),
            student(3, name="Anna-Maria O'Neil"),
        ]
        result = read_roster(write_xlsx(tmp_path / "names.xlsx", rows), "student")
        assert [(r.row_number, r.name) for r in result.rows] == [
            (2, "张 三"),
            (5, "Anna-Maria O'Neil"),
        ]
        assert [(e.row_number, e.column) for e in result.errors] == [(3, "姓名"), (4, "姓名")]
        assert "too long" in result.errors[0].reason

    def test_progress_called_with_total_from_workbook(self, tmp_path: Path) -> None:
        rows: list[Any] = [STUDENT_HEADERS_ZH, *(student(i) for i in range(1200))]
        path = write_xlsx(tmp_path / "p.xlsx", rows)
        calls: list[tuple[int, int | None]] = []
        result = read_roster(path, "student", progress=lambda d, t: calls.append((d, t)))
        assert len(result.rows) == 1200
        assert calls == [(500, 1200), (1000, 1200), (1200, 1200)]

    @pytest.mark.parametrize("suffix", [".xlsx", ".csv"])
    def test_progress_without_declared_size(self, tmp_path: Path, suffix: str) -> None:
        # A write-only workbook (and CSV) declares no size: total is unknown until the end.
        path = tmp_path / f"p{suffix}"
        write_table(path, STUDENT_HEADERS_ZH, (student(i) for i in range(600)))
        calls: list[tuple[int, int | None]] = []
        read_roster(path, "student", progress=lambda d, t: calls.append((d, t)))
        assert calls == [(500, None), (600, 600)]


class TestCsv:
    def test_utf8_bom_english_headers(self, tmp_path: Path) -> None:
        rows = [STUDENT_HEADERS_EN, student(0)[:6], student(1)[:6]]
        path = write_csv(tmp_path / "s.csv", rows, encoding="utf-8-sig")
        assert path.read_bytes().startswith(b"\xef\xbb\xbf")
        result = read_roster(path, "student")
        assert result.ok, reasons(result)
        assert result.encoding == "utf-8-sig"
        assert [(r.row_number, r.name, r.photo) for r in result.rows] == [
            (2, "张三", "P00000"),
            (3, "欧阳娜娜", "P00001"),
        ]

    def test_gbk_encoded_tab_delimited(self, tmp_path: Path) -> None:
        rows = [STUDENT_HEADERS_ZH, student(0), [], student(1), student(2, nid="1.10105E+17")]
        path = write_csv(tmp_path / "s.csv", rows, encoding="gbk", delimiter="\t")
        with pytest.raises(UnicodeDecodeError):
            path.read_bytes().decode("utf-8")
        result = read_roster(path, "student")
        assert result.encoding == "gb18030"
        assert [(r.row_number, r.name, r.college) for r in result.rows] == [
            (2, "张三", "计算机学院"),
            (4, "欧阳娜娜", "计算机学院"),
        ]
        assert reasons(result) == [
            (5, "身份证号", "身份证号须为文本格式 / national ID must be a text cell")
        ]

    def test_header_aliases_are_normalised(self, tmp_path: Path) -> None:
        headers = ["*姓名", " Student Number ", "学院", "班级", "身份证号码"]
        rows = [headers, student(0)[:5]]
        result = read_roster(write_csv(tmp_path / "a.csv", rows, encoding="utf-8"), "student")
        assert result.ok, reasons(result)
        assert result.rows[0].national_id == nid(0)

    def test_duplicate_header_is_a_file_level_error(self, tmp_path: Path) -> None:
        headers = ["姓名", "学号", "学院", "班级", "身份证号", "身份证"]
        rows = [headers, [*student(0)[:5], nid(0)]]
        result = read_roster(write_csv(tmp_path / "h.csv", rows, encoding="utf-8"), "student")
        assert result.rows == []
        assert [(e.row_number, e.column) for e in result.errors] == [(1, "身份证")]
        assert "duplicate column" in result.errors[0].reason

    def test_undecodable_and_empty_files(self, tmp_path: Path) -> None:
        bad = tmp_path / "bad.csv"
        bad.write_bytes(b"\xff\xfe\x00\x81\x30\xff")
        result = read_roster(bad, "student")
        assert [(e.row_number, e.column) for e in result.errors] == [(0, None)]
        assert "cannot decode" in result.errors[0].reason
        empty = tmp_path / "empty.csv"
        empty.write_bytes(b"")
        assert "empty" in read_roster(empty, "student").errors[0].reason


class TestOtherKindsAndFiles:
    def test_staff_without_number_allowed(self, tmp_path: Path) -> None:
        # ISS-6: staff without a staff number yet are on the list with an empty number.
        headers = ["姓名", "职工号", "工作部门", "身份证", "人员类别"]
        rows = [
            headers,
            ["李老师", "T0001", "数学学院", nid(0), "教职工"],
            ["赵老师", None, "人事处", nid(1), None],
            ["钱老师", "", "外语学院", nid(2), "外籍教师"],
            ["孙老师", "T0001", "物理学院", nid(3), "宇航员"],
        ]
        result = read_roster(write_xlsx(tmp_path / "staff.xlsx", rows), "staff")
        assert [(r.row_number, r.staff_number, r.category) for r in result.rows] == [
            (2, "T0001", HolderCategory.STAFF),
            (3, None, None),
            (4, None, HolderCategory.FOREIGN_TEACHER),
        ]
        assert result.rows[0].department == "数学学院"
        assert reasons(result) == [
            (5, "职工号", "工号与第2行重复 / staff number duplicates row 2"),
            (5, "人员类别", "人员类别无效 / unknown holder category"),
        ]

    def test_staff_number_column_required(self, tmp_path: Path) -> None:
        rows = [["姓名", "部门", "身份证号"], ["李老师", "数学学院", nid(0)]]
        result = read_roster(write_xlsx(tmp_path / "staff.xlsx", rows), "staff")
        assert [e.column for e in result.errors] == ["工号/staff number"]

    def test_meal_list(self, tmp_path: Path) -> None:
        # MEAL-1 / MEAL-2: HR's list of staff numbers and subsidised meal counts.
        rows = [
            ["工号", "姓名", "补贴次数"],
            ["T0001", "李老师", 60],
            [100234, "赵老师", "30"],
            ["T0003", "钱老师", 0],
            ["T0004", "孙老师", -1],
            ["T0005", "周老师", 2.5],
            ["T0006", "吴老师", None],
            ["T0001", "郑老师", 10],
        ]
        result = read_roster(write_xlsx(tmp_path / "meal.xlsx", rows), "meal")
        assert [(r.row_number, r.staff_number, r.meal_quota) for r in result.rows] == [
            (2, "T0001", 60),
            (3, "100234", 30),
            (4, "T0003", 0),
        ]
        assert reasons(result) == [
            (5, "补贴次数", "用餐次数不能为负数 / meal quota must not be negative"),
            (6, "补贴次数", "用餐次数须为整数 / meal quota must be a whole number"),
            (7, "补贴次数", "用餐次数为空 / meal quota is empty"),
            (8, "工号", "工号与第2行重复 / staff number duplicates row 2"),
        ]

    def test_meal_list_needs_quota_column(self, tmp_path: Path) -> None:
        rows = [["staff_number", "name"], ["T0001", "Li"]]
        result = read_roster(write_csv(tmp_path / "m.csv", rows, encoding="utf-8"), "meal")
        assert reasons(result) == [
            (1, "用餐次数/meal quota", "缺少“用餐次数”列 / missing column: meal quota")
        ]

    def test_unreadable_files_do_not_raise(self, tmp_path: Path) -> None:
        fake = tmp_path / "fake.xlsx"
        fake.write_bytes(b"this is not a zip file")
        result = read_roster(fake, "student")
        assert [(e.row_number, e.column) for e in result.errors] == [(0, None)]
        assert "cannot read the Excel file" in result.errors[0].reason
        old = tmp_path / "old.xls"
        old.write_bytes(b"\xd0\xcf\x11\xe0")
        assert "unsupported file type .xls" in read_roster(old, "student").errors[0].reason

    def test_missing_file_raises(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError):
            read_roster(tmp_path / "nope.csv", "student")


class TestWriteTable:
    ROWS: ClassVar[list[list[object]]] = [
        ["张三", "202500000", nid(0), date(2029, 7, 31), 3],
        ['=HYPERLINK("http://x")', "00123", "11010519491231002X", None, 0],
    ]
    HEADERS: ClassVar[list[str]] = ["姓名", "学号", "身份证号", "有效期", "次数"]

    def test_xlsx_round_trip_keeps_text(self, tmp_path: Path) -> None:
        path = tmp_path / "batch.xlsx"
        assert write_table(path, self.HEADERS, iter(self.ROWS)) == 2
        wb = load_workbook(path)
        ws = wb.active
        assert ws is not None
        values = [list(r) for r in ws.iter_rows(values_only=True)]
        assert values[0] == self.HEADERS
        assert values[1][:3] == ["张三", "202500000", nid(0)]
        assert values[1][3] == datetime(2029, 7, 31)
        assert values[1][4] == 3
        # Strings stay text: leading zeros kept, "=..." is not a formula.
        assert ws["A3"].data_type == "s"
        assert values[2][:3] == ['=HYPERLINK("http://x")', "00123", "11010519491231002X"]
        assert not list(tmp_path.glob(".*.tmp"))

    def test_csv_round_trip_is_utf8_bom(self, tmp_path: Path) -> None:
        path = tmp_path / "batch.csv"
        assert write_table(path, self.HEADERS, self.ROWS) == 2
        raw = path.read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf")
        with path.open(encoding="utf-8-sig", newline="") as fh:
            got = list(csv.reader(fh))
        assert got == [
            self.HEADERS,
            ["张三", "202500000", nid(0), "2029-07-31", "3"],
            ['\'=HYPERLINK("http://x")', "00123", "11010519491231002X", "", "0"],
        ]

    @pytest.mark.parametrize("suffix", [".xlsx", ".csv"])
    def test_written_roster_reads_back(self, tmp_path: Path, suffix: str) -> None:
        path = tmp_path / f"roster{suffix}"
        write_table(path, STUDENT_HEADERS_ZH, (student(i) for i in range(20)))
        result = read_roster(path, "student")
        assert result.ok, reasons(result)
        assert [r.national_id for r in result.rows] == [nid(i) for i in range(20)]
        assert [r.row_number for r in result.rows] == list(range(2, 22))

    def test_unsupported_suffix(self, tmp_path: Path) -> None:
        from protocol.errors import InvalidInput

        with pytest.raises(InvalidInput):
            write_table(tmp_path / "x.xls", ["a"], [])


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".xlsx", ".csv"])
def test_thirty_thousand_rows(tmp_path: Path, suffix: str) -> None:
    """Size check for a whole intake year (timing goes to benchmarks, not asserts)."""
    n = 30_000
    path = tmp_path / f"big{suffix}"
    write_table(path, STUDENT_HEADERS_ZH, (student(i) for i in range(n)))
    done: list[int] = []
    result = read_roster(path, "student", progress=lambda d, t: done.append(d))
    assert result.ok, reasons(result)[:5]
    assert len(result.rows) == n
    assert result.rows[-1].row_number == n + 1
    assert result.rows[-1].national_id == nid(n - 1)
    assert done[-1] == n


def test_document_type_column_validates_each_number_by_its_type(tmp_path: Path) -> None:
    """ISS-8/11: a 证件类型 column names the document in the 证件号码 column; blank is a resident
    ID; each number is validated and normalised by its own format, a bad type or number is a row
    error naming the column."""
    path = write_xlsx(
        tmp_path / "staff.xlsx",
        [
            ["姓名", "工号", "部门", "证件类型", "证件号码"],
            ["李老师", "T1", "数学系", None, nid(1)],
            ["John Smith", "T2", "外语学院", "护照", "e1234 5678"],
            ["陈先生", "T3", "外语学院", "回乡证", "H1234567801"],
            ["王先生", "T4", "外语学院", "台胞证", "1234567"],
            ["Ivan", "T5", "外语学院", "驾驶证", "E7654321"],
        ],
    )
    result = read_roster(path, "staff")
    assert [(r.id_doc_type, r.national_id) for r in result.rows] == [
        (None, nid(1)),
        (IdDocType.PASSPORT, "E12345678"),
        (IdDocType.HK_MACAU_PERMIT, "H12345678"),
    ]
    assert [(e.row_number, e.column) for e in result.errors] == [(5, "证件号码"), (6, "证件类型")]
    assert "Taiwan permit" in result.errors[0].reason
    assert "unknown ID document type" in result.errors[1].reason
