"""A deterministic synthetic campus: realistic Chinese names, valid national IDs, colleges and
classes — no real person's data (PIPL). Pure: same seed, same campus."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta

from protocol.cards.identity import make_national_id
from protocol.types import HolderCategory

# common surnames, roughly by frequency (weights are relative)
SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡"
    "余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯"
    "龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)
GIVEN = (
    "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红鹏辉鑫宇浩然子轩梓涵欣怡诗雨"
    "思远嘉琪雅婷佳慧晨阳文博一鸣俊杰志强海燕凯瑞睿泽梦琪晓东晓燕建国春梅秋实"
)
SURNAME_WEIGHTS = [max(1, 100 - i) for i in range(len(SURNAMES))]
COLLEGES = {
    "计算机科学与技术学院": ("计科", "软工", "网安"),
    "经济与管理学院": ("会计", "金融", "工商"),
    "文学与新闻学院": ("汉语言", "新闻"),
    "理学院": ("数学", "物理", "化学"),
    "外国语学院": ("英语", "日语"),
    "机电工程学院": ("机械", "电气", "自动化"),
    "医学院": ("临床", "护理"),
    "艺术学院": ("美术", "音乐"),
}
DEPARTMENTS = ("教务处", "人事处", "后勤管理处", "图书馆", "网管中心", "财务处", "学生处", "保卫处")
REGIONS = ("511502", "511521", "510104", "500103", "530102", "520102", "110105", "320102", "440106")


@dataclass(frozen=True, slots=True)
class Person:
    name: str
    national_id: str
    number: str | None
    college: str | None = None
    class_name: str | None = None
    department: str | None = None
    photo: str | None = None
    category: HolderCategory = HolderCategory.STUDENT


class Campus:
    def __init__(self, seed: int = 2026) -> None:
        self.rng = random.Random(seed)
        self._ids: set[str] = set()

    def name(self) -> str:
        surname = self.rng.choices(SURNAMES, weights=SURNAME_WEIGHTS)[0]
        length = 1 if self.rng.random() < 0.35 else 2
        return surname + "".join(self.rng.choice(GIVEN) for _ in range(length))

    def national_id(self, born_from: int, born_to: int) -> str:
        while True:
            start = date(born_from, 1, 1)
            birth = start + timedelta(days=self.rng.randrange((date(born_to, 12, 31) - start).days))
            nid = make_national_id(self.rng.choice(REGIONS), birth, self.rng.randrange(1, 999))
            if nid not in self._ids:
                self._ids.add(nid)
                return nid

    def students(self, count: int, year: int = 2026, class_size: int = 40) -> Iterator[Person]:
        colleges = list(COLLEGES.items())
        for i in range(count):
            college, majors = colleges[(i // (class_size * 3)) % len(colleges)]
            major = majors[(i // class_size) % len(majors)]
            number = f"{year}{i + 1:06d}"
            yield Person(
                name=self.name(),
                national_id=self.national_id(year - 20, year - 17),
                number=number,
                college=college,
                class_name=f"{major}{year}-{(i // class_size) % 9 + 1}班",
                photo=f"photos/{number}.jpg",
            )

    def staff(self, count: int) -> Iterator[Person]:
        for i in range(count):
            number = f"T{i + 1:05d}"
            yield Person(
                name=self.name(),
                national_id=self.national_id(1962, 2000),
                number=number,
                department=self.rng.choice(DEPARTMENTS),
                photo=f"photos/{number}.jpg",
                category=HolderCategory.STAFF,
            )

    def visitors(self, count: int) -> Iterator[Person]:
        kinds = sorted(
            c for c in HolderCategory if c not in (HolderCategory.STUDENT, HolderCategory.STAFF)
        )
        for _ in range(count):
            yield Person(
                name=self.name(),
                national_id=self.national_id(1950, 2004),
                number=None,
                category=self.rng.choice(kinds),
            )
