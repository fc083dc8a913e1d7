"""Task v2: GSM8K-easy word problems, rendered in varied English, with an exact step verifier.

A problem is a small program over quantities: given numbers (stated in the question, or implied
by words such as "twice" and "half"), distractor numbers that nothing uses, and derived
quantities, each one operation (+, −, ×, ÷, exact) over two earlier quantities. The question
states the program in sentences drawn from many forms; the solution computes one derived
quantity per step, in GSM8K's style, then boxes the asked one:

    Question: Tom has 5 pens. He buys 3 more. Jim has twice as many pens as Tom.
              How many pens does Jim have?
    Solution: Tom has 5 + 3 = 8 pens now.

              Tom has 8 pens, so Jim has 8 × 2 = 16 pens.

              \\boxed{16}

``verify_step`` judges a step given the steps before it, as written: it must compute a quantity
of the program whose inputs are known (given, or computed by a prior step, with the value that
step wrote), with the right operation and arithmetic; ``classify_step`` names what a wrong step
got wrong. Some sentence forms are reserved for the ``heldout`` split, which measures
generalisation to unseen phrasings; the other problems go to train / calibration / test by a hash
of their question, so all four splits are disjoint and each is a reproducible function of its seed.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from stepgraph.errors import ConfigError
from stepgraph.testbed.wordlists import CONTAINERS, GROUPS, NAMES, NOUNS, PERIODS, RATES, RELATIVES

Split = Literal["train", "calibration", "test", "heldout"]
Op = Literal["+", "-", "*", "/"]
Role = Literal["given", "implicit", "distractor", "derived"]
ErrorKind = Literal["arithmetic_slip", "wrong_operand", "wrong_operation", "wrong_quantity", "skipped_step", "extra_step", "malformed"]
ERROR_KINDS: tuple[ErrorKind, ...] = (
    "arithmetic_slip", "wrong_operand", "wrong_operation", "wrong_quantity", "skipped_step", "extra_step", "malformed")

STEP_SEPARATOR = "\n\n"
SYMBOLS: dict[Op, str] = {"+": "+", "-": "-", "*": "×", "/": "÷"}
_OPS_IN_TEXT = {"+": "+", "-": "-", "−": "-", "×": "*", "*": "*", "x": "*", "÷": "/", "/": "/"}
_NUMBER = r"\$?(\d+)"
# One binary equation; a chain ("2 + 3 + 4 = 9", "= 5 + 1") is not one.
_EQUATION = re.compile(rf"(?<![\d.+\-−×*÷/=]\s)(?<![\d.+\-−×*÷/=])\s*{_NUMBER}\s*([+\-−×*x÷/])\s*{_NUMBER}\s*=\s*{_NUMBER}(?!\s*[+\-−×*x÷/=]\s*\$?\d)")
_ANY_EQUALS = re.compile(r"\d\s*=\s*\$?\d")
_BOXED = re.compile(r"^\\boxed\{\$?(\d+)\}\.?$")
_PRONOUN = re.compile(r"\b(she|he|they|her|him|them|their|his)\b", re.IGNORECASE)
_SPLIT_BUCKETS = {"train": range(8), "calibration": range(8, 9), "test": range(9, 10)}
VALUE_MAX = 999

# Sentence forms by family: (form id, template, noun kinds it fits or None for any).
# Fields: {A} {B} names; {P}/{p} the subject pronoun (capitalised / not), {o} object, {poss}
# possessive; {N} an amount with its noun ("5 pens", "$5"), {K} a bare amount ("5", "$5");
# {X} the noun ("pens", "money"); [verb] is conjugated for a "they" subject.
Form = tuple[str, str, frozenset[str] | None]


def _f(form_id: str, template: str, kinds: str | None = None) -> Form:
    return form_id, template, frozenset(kinds.split()) if kinds else None


_COUNTABLE = "item food baked picked fragile balloon animal unit"
FORMS: dict[str, tuple[Form, ...]] = {
    "has": (
        _f("has.plain", "{A} has {N}."), _f("has.owns", "{A} owns {N}.", "item fragile animal"),
        _f("has.start", "At first, {A} has {N}."), _f("has.there", "{A} has {N} at home.", _COUNTABLE),
        _f("has.held.first", "{A} has {N} at first."), _f("has.held.home", "At home, {A} has {N}.", _COUNTABLE),
    ),
    "gain": (
        _f("gain.gets", "{P} [gets] {K} more."), _f("gain.buys", "{P} [buys] {K} more.", "item food baked picked fragile balloon animal"),
        _f("gain.finds", "{P} [finds] {K} more.", "item picked money"), _f("gain.receives", "{P} [receives] {K} more as a gift."),
        _f("gain.wins", "{P} [wins] {K} more at the fair.", "item money balloon"), _f("gain.bakes", "{P} [bakes] {K} more.", "baked"),
        _f("gain.picks", "{P} [picks] {K} more.", "picked"), _f("gain.earns", "{P} [earns] {K} more.", "money"),
        _f("gain.given", "{P} [is] given {K} more by {poss} {rel}."), _f("gain.from", "{P} [gets] {K} more from {B}."),
        _f("gain.held.gift", "{P} [gets] {K} more as a gift from {B}."), _f("gain.held.shop", "{P} [buys] {K} more at the shop.", "item food baked picked fragile balloon animal"),
    ),
    "lose": (
        _f("lose.gives", "{P} [gives away] {K}."), _f("lose.loses", "{P} [loses] {K}."),
        _f("lose.sells", "{P} [sells] {K}.", "item food baked picked fragile animal balloon"), _f("lose.uses", "{P} [uses] {K}.", "item food baked"),
        _f("lose.eats", "{P} [eats] {K}.", "food baked picked"), _f("lose.spends", "{P} [spends] {K}.", "money"),
        _f("lose.breaks", "{P} [breaks] {K}.", "fragile"), _f("lose.drops", "{P} [drops] {K}.", "item food picked fragile"),
        _f("lose.pop", "{K} of them pop.", "balloon"), _f("lose.to", "{P} [gives] {K} to {B}."),
        _f("lose.held.fair", "{P} [sells] {K} of them at the fair.", "item food baked picked fragile animal"), _f("lose.held.away", "{P} [gives] {K} away."),
    ),
    "boxes": (
        _f("boxes.of", "{P} [buys] {k} {Cs} of {m} {X}.", _COUNTABLE), _f("boxes.each", "{P} [gets] {k} {Cs} with {m} {X} in each.", _COUNTABLE),
        _f("boxes.held.with", "{P} [buys] {k} {Cs}, each with {m} {X}.", _COUNTABLE),
    ),
    "holds": (
        _f("holds.a", "A {c} holds {m} {X}."), _f("holds.each", "Each {c} has {m} {X}."), _f("holds.there", "There are {m} {X} in each {c}."),
        _f("holds.held.each", "Each {c} holds {m} {X}."),
    ),
    "hascontainers": (_f("hascont.has", "{A} has {k} {Cs}."), _f("hascont.buys", "{A} buys {k} {Cs}."), _f("hascont.held.home", "At home, {A} has {k} {Cs}.")),
    "rate": (
        _f("rate.per", "{A} {verb} {r} {X} per {period} for {d} {periods}."), _f("rate.every", "{A} {verb} {r} {X} every {period} for {d} {periods}."),
        _f("rate.for", "For {d} {periods}, {A} {verb} {r} {X} each {period}."),
        _f("rate.held.each", "Each {period}, {A} {verb} {r} {X} for {d} {periods}."),
    ),
    "price": (
        _f("price.each", "Each {x} costs ${m}."), _f("price.one", "One {x} costs ${m}."), _f("price.shop", "The shop sells {X} for ${m} each."),
        _f("price.held.shop", "At the shop, each {x} costs ${m}."),
    ),
    "purchase": (_f("purchase.buys", "{A} buys {k} {X}."), _f("purchase.wants", "{A} wants to buy {k} {X}."), _f("purchase.held.shop", "{A} buys {k} {X} at the shop.")),
    "wallet": (_f("wallet.has", "{P} [has] ${m}."), _f("wallet.pays", "{P} [pays] with a ${m} bill."), _f("wallet.held.bill", "{P} [has] a ${m} bill.")),
    "share": (
        _f("share.splits", "{P} [splits] them equally among {k} {group}.", _COUNTABLE),
        _f("share.divides", "{P} [divides] them equally between {k} {group}.", _COUNTABLE),
        _f("share.held.shares", "{P} [shares] them equally among {k} {group}.", _COUNTABLE),
    ),
    "share_named": (_f("share.shares", "{A} shares {N} equally among {k} {group}.", _COUNTABLE),
                    _f("share.held.named", "{A} divides {N} equally among {k} {group}.", _COUNTABLE)),
    "bags": (_f("bags.puts", "{P} [puts] them into {Cs} of {k}.", _COUNTABLE), _f("bags.packs", "{P} [packs] them in {Cs} of {k} each.", _COUNTABLE),
             _f("bags.held.in", "{P} [puts] them in {Cs} of {k} each.", _COUNTABLE)),
    "half": (_f("half.gives", "{P} [gives] half of them to {B}.", _COUNTABLE), _f("half.eats", "{P} [eats] half of them.", "food baked picked"),
             _f("half.sells", "{P} [sells] half of them.", "item food baked picked fragile animal"), _f("half.held.away", "{P} [gives] half of them away.", _COUNTABLE)),
    "more": (_f("more.than", "{B} has {K} more {X} than {A}."), _f("more.held.has", "{B} has {k} more {X} than {A} has.", _COUNTABLE)),
    "fewer": (_f("fewer.than", "{B} has {k} fewer {X} than {A}.", _COUNTABLE), _f("fewer.less", "{B} has {K} less than {A}.", "money"),
              _f("fewer.held.has", "{B} has {k} fewer {X} than {A} has.", _COUNTABLE)),
    "times": (_f("times.as", "{B} has {times} as many {X} as {A}.", _COUNTABLE), _f("times.money", "{B} has {times} as much money as {A}.", "money"),
              _f("times.held.has", "{B} has {times} as many {X} as {A} has.", _COUNTABLE)),
    "halfas": (_f("halfas.as", "{B} has half as many {X} as {A}.", _COUNTABLE), _f("halfas.money", "{B} has half as much money as {A}.", "money"),
               _f("halfas.held.has", "{B} has half as many {X} as {A} has.", _COUNTABLE)),
    "ask_own": (
        _f("ask.own", "How many {X} [does] {p} have?", _COUNTABLE), _f("ask.own.now", "How many {X} [does] {p} have now?", _COUNTABLE),
        _f("ask.own.money", "How much money [does] {p} have now?", "money"), _f("ask.own.end", "How many {X} does {A} have in the end?", _COUNTABLE),
        _f("ask.held.own", "How many {X} does {A} have at the end?", _COUNTABLE),
    ),
    "ask_left": (_f("ask.left", "How many {X} [does] {p} have left?", _COUNTABLE), _f("ask.left.money", "How much money [does] {p} have left?", "money"),
                 _f("ask.held.left", "How many {X} [does] {p} have left in the end?", _COUNTABLE)),
    "ask_other": (_f("ask.other", "How many {X} does {B} have?", _COUNTABLE), _f("ask.other.money", "How much money does {B} have?", "money"),
                  _f("ask.held.other", "In the end, how many {X} does {B} have?", _COUNTABLE)),
    "ask_total": (_f("ask.total", "How many {X} do {A} and {B} have together?", _COUNTABLE), _f("ask.total.all", "How many {X} do {A} and {B} have in total?", _COUNTABLE),
                  _f("ask.total.money", "How much money do {A} and {B} have altogether?", "money"),
                  _f("ask.held.total", "Together, how many {X} do {A} and {B} have?", _COUNTABLE)),
    "ask_diff": (_f("ask.diff", "How many more {X} does {A} have than {B}?", _COUNTABLE), _f("ask.diff.fewer", "How many fewer {X} does {B} have than {A}?", _COUNTABLE),
                 _f("ask.diff.money", "How much more money does {A} have than {B}?", "money"),
                 _f("ask.held.diff", "How many more {X} does {A} have than {B} has?", _COUNTABLE)),
    "ask_each": (_f("ask.each", "How many does each get?", _COUNTABLE), _f("ask.each.named", "How many {X} does each of the {group} get?", _COUNTABLE),
                 _f("ask.held.each", "How many {X} does each of them get?", _COUNTABLE)),
    "ask_bags": (_f("ask.bags", "How many {Cs} [does] {p} fill?", _COUNTABLE), _f("ask.held.bags", "How many {Cs} [does] {p} fill in total?", _COUNTABLE)),
    "ask_in": (_f("ask.in", "How many {X} are in {k} {Cs}?"), _f("ask.in.hold", "How many {X} do {k} {Cs} hold?"), _f("ask.held.in", "How many {X} are there in {k} {Cs}?")),
    "ask_rate": (_f("ask.rate", "How many {X} [does] {p} {base} in total?"), _f("ask.rate.all", "How many {X} does {A} {base} altogether?"),
                 _f("ask.held.rate", "In total, how many {X} [does] {p} {base}?")),
    "ask_spend": (_f("ask.spend", "How much [does] {p} spend?"), _f("ask.spend.money", "How much money [does] {p} spend in total?"),
                  _f("ask.held.spend", "How much money does {A} spend?")),
    "ask_change": (_f("ask.change", "How much change [does] {p} get?"), _f("ask.change.left", "How much money [does] {p} have left?"),
                   _f("ask.held.change", "How much money [does] {p} have left in the end?")),
    "distractor": (
        _f("distractor.has", "{C} has {m} {Y}."), _f("distractor.age", "{A} is {m} years old."), _f("distractor.rel", "{A}'s {rel} is {m} years old."),
        _f("distractor.temp", "It is {m} degrees outside."), _f("distractor.held.rel", "{C}'s {rel} has {m} {Y}."),
    ),
}
HELDOUT_FORMS: frozenset[str] = frozenset(fid for forms in FORMS.values() for fid, _, _ in forms if ".held" in fid)
"""Sentence forms that only the ``heldout`` split uses."""


@dataclass(frozen=True)
class Quantity:
    """One node of a problem's program: a given number or one operation over two earlier ones."""

    key: str
    value: int
    role: Role
    op: Op | None = None
    inputs: tuple[str, ...] = ()
    money: bool = False


@dataclass(frozen=True)
class WordProblem:
    """A generated problem: the question, its program, the gold steps and the sentence forms used."""

    question: str
    quantities: tuple[Quantity, ...]
    asked: str
    steps: tuple[str, ...]
    forms: tuple[str, ...]

    @property
    def answer(self) -> int:
        return self.quantity(self.asked).value

    @property
    def solution(self) -> str:
        return STEP_SEPARATOR.join(self.steps)

    @property
    def derived(self) -> tuple[Quantity, ...]:
        """The quantities the solution computes, in the gold order."""
        return tuple(q for q in self.quantities if q.role == "derived")

    def quantity(self, key: str) -> Quantity:
        return next(q for q in self.quantities if q.key == key)


class _Redraw(Exception):
    """The drawn numbers break a rule (a negative, inexact or too large value): draw again."""


def _apply(op: Op, a: int, b: int) -> int | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a // b if b and a % b == 0 else None


def _conjugate(verb: str) -> str:
    """The plural ("they") form of a 3rd-person-singular verb phrase."""
    first, _, rest = verb.partition(" ")
    irregular = {"has": "have", "does": "do", "is": "are"}
    if first in irregular:
        base = irregular[first]
    elif first.endswith(("ches", "shes", "sses", "xes")):
        base = first[:-2]
    elif first.endswith("ies"):
        base = first[:-3] + "y"
    else:
        base = first[:-1]
    return f"{base} {rest}".strip()


@dataclass
class _Noun:
    kind: str
    singular: str
    plural: str

    @property
    def money(self) -> bool:
        return self.kind == "money"

    def amount(self, value: int) -> str:
        return f"${value}" if self.money else f"{value} {self.singular if value == 1 else self.plural}"

    def bare(self, value: int) -> str:
        return f"${value}" if self.money else str(value)


class _Draft:
    """One problem being drawn: sentences, quantities and gold steps, in order."""

    def __init__(self, rng: random.Random, heldout: bool):
        self.rng, self.heldout = rng, heldout
        self.quantities: list[Quantity] = []
        self.sentences: list[str] = []
        self.steps: list[str] = []
        self.forms: list[str] = []

    def say(self, family: str, kind: str, they: bool = False, **fields: Any) -> None:
        forms = [f for f in FORMS[family] if (f[2] is None or kind in f[2]) and (self.heldout or f[0] not in HELDOUT_FORMS)]
        held = [f for f in forms if f[0] in HELDOUT_FORMS]
        form_id, template, _ = self.rng.choice(held if held and self.rng.random() < 0.4 else forms)
        plural = they and ("{P}" in template or "{p}" in template)
        text = re.sub(r"\[([^\]]+)\]", lambda m: _conjugate(m.group(1)) if plural else m.group(1), template)
        text = text.format(**fields)
        self.forms.append(form_id)
        self.sentences.append(text[0].upper() + text[1:])

    def given(self, value: int, role: Role = "given", money: bool = False) -> str:
        if not 0 < value <= VALUE_MAX:
            raise _Redraw
        key = f"q{len(self.quantities)}"
        self.quantities.append(Quantity(key, value, role, money=money))
        return key

    def value(self, key: str) -> int:
        return next(q.value for q in self.quantities if q.key == key)

    def derive(self, op: Op, a: str, b: str, step: str, money: bool = False, **fields: Any) -> str:
        """A derived quantity and its gold step; ``step`` has an ``{eq}`` field for the equation."""
        qa, qb = (next(q for q in self.quantities if q.key == k) for k in (a, b))
        value = _apply(op, qa.value, qb.value)
        if value is None or not 0 < value <= VALUE_MAX:
            raise _Redraw
        key = f"q{len(self.quantities)}"
        self.quantities.append(Quantity(key, value, "derived", op, (a, b), money))
        eq = f"{_dollars(qa.money, qa.value)} {SYMBOLS[op]} {_dollars(qb.money, qb.value)} = {_dollars(money, value)}"
        text = step.format(eq=eq, **fields)
        self.steps.append(text[0].upper() + text[1:])
        return key


def _dollars(money: bool, value: int) -> str:
    return f"${value}" if money else str(value)


_NAME_POSITION = {name: i for i, (name, _) in enumerate(NAMES)}


class _Untaken(Sequence[tuple[str, str]]):
    """``NAMES`` without the taken ones, as ``rng.choice`` sees a filtered list (same draws), without building it."""

    def __init__(self, taken: set[str]) -> None:
        self.skipped = sorted(_NAME_POSITION[name] for name in taken)

    def __len__(self) -> int:
        return len(NAMES) - len(self.skipped)

    def __getitem__(self, i):  # type: ignore[no-untyped-def]  # rng.choice passes an int
        for position in self.skipped:
            i += position <= i
        return NAMES[i]


def _person(rng: random.Random, taken: set[str]) -> dict[str, Any]:
    name, pronoun = rng.choice(_Untaken(taken))  # a hot path: the tokenizer's corpus draws 100k people
    taken.add(name)
    obj, poss = {"she": ("her", "her"), "he": ("him", "his"), "they": ("them", "their")}[pronoun]
    return {"A": name, "P": pronoun.capitalize(), "p": pronoun, "o": obj, "poss": poss, "they": pronoun == "they"}


def _noun(rng: random.Random, money_ok: bool = True) -> _Noun:
    if money_ok and rng.random() < 0.15:
        return _Noun("money", "dollar", "dollars")
    kind = rng.choice(sorted(NOUNS))
    singular, plural = rng.choice(NOUNS[kind])
    return _Noun(kind, singular, plural)


def _draw(rng: random.Random, heldout: bool) -> WordProblem:
    d = _Draft(rng, heldout)
    taken: set[str] = set()
    a = _person(rng, taken)
    b = _person(rng, taken)
    other = _person(rng, taken)
    base = rng.choices(["has", "containers", "rate", "price"], weights=[6, 2, 1.5, 1.5])[0]
    noun = _noun(rng, money_ok=base == "has")
    X = "money" if noun.money else noun.plural
    common: dict[str, Any] = {"A": a["A"], "B": b["A"], "X": X, "rel": rng.choice(RELATIVES)}
    pron = {k: a[k] for k in ("P", "p", "o", "poss")}
    they = bool(a["they"])
    r = rng.randint
    if base == "rate":
        verb, unit, units = rng.choice(RATES)
        period, periods = rng.choice(PERIODS)
        noun = _Noun("unit", unit, units)
        common["X"] = units
        rate, days = d.given(r(2, 12)), d.given(r(2, 9))
        d.say("rate", "unit", verb=verb, r=d.value(rate), d=d.value(days), period=period, periods=periods, **common)
        current = d.derive("*", rate, days, "{A} {verb} {eq} {X} in {d} {periods}.", verb=verb, d=d.value(days), periods=periods, **common)
        fields = {"verb": verb, "base": _conjugate(verb), "verb_past": verb}
        ending = rng.choice(["ask", "ask", "more", "total"])
        if ending == "ask":
            d.say("ask_rate", "unit", they, **common, **pron, **fields)
        else:
            _compare_ending(d, rng, noun, current, ending, common)
        return _finish(d, rng, common)
    if base == "price":
        noun = _noun(rng, money_ok=False)
        common["X"], x = noun.plural, noun.singular
        price, count = d.given(r(2, 15), money=True), d.given(r(2, 9))
        d.say("price", noun.kind, x=x, m=d.value(price), **common)
        d.say("purchase", noun.kind, k=d.value(count), **common)
        spent = d.derive("*", count, price, "{A} spends {eq}.", money=True, **common)
        if rng.random() < 0.5:
            d.say("ask_spend", "money", they, **common, **pron)
        else:
            wallet = d.given(d.value(spent) + r(1, 40), money=True)
            d.say("wallet", "money", they, m=d.value(wallet), **common, **pron)
            d.derive("-", wallet, spent, "{A} has {eq} left.", money=True, **common)
            d.say("ask_change", "money", they, **common, **pron)
        return _finish(d, rng, common)
    if base == "containers":
        if noun.money:
            raise _Redraw
        container, containers = rng.choice(CONTAINERS)
        size, count = d.given(r(2, 12)), d.given(r(2, 9))
        d.say("holds", noun.kind, c=container, m=d.value(size), **common)
        if rng.random() < 0.4:
            d.say("ask_in", noun.kind, k=d.value(count), Cs=containers, **common)
            d.derive("*", count, size, "{k} {Cs} hold {eq} {X}.", k=d.value(count), Cs=containers, **common)
            return _finish(d, rng, common)
        d.say("hascontainers", noun.kind, k=d.value(count), Cs=containers, **common)
        current = d.derive("*", count, size, "{A} has {eq} {X}.", **common)
    else:
        current = d.given(r(2, 60), money=noun.money)
        d.say("has", noun.kind, N=noun.amount(d.value(current)), **common)
    # Gifts to and from a third person, so that B (compared with A below) never takes part in them.
    events = {**common, "B": other["A"]}
    for _ in range(rng.choice([0, 1, 1, 1, 2, 2, 3])):
        current = _event(d, rng, noun, current, events, pron, they)
    ending = rng.choice(["own", "own", "share", "more", "fewer", "times", "halfas", "total", "diff"])
    if ending == "own":
        if not d.steps:
            current = _event(d, rng, noun, current, events, pron, they)
        lost = d.quantities[-1].role == "derived" and d.quantities[-1].op in ("-", "/")
        d.say("ask_left" if lost and rng.random() < 0.6 else "ask_own", noun.kind, they, **common, **pron)
    elif ending == "share":
        if noun.money:
            raise _Redraw
        total = d.value(current)
        divisors = [k for k in range(2, 11) if total % k == 0 and total // k > 1]
        if not divisors:
            raise _Redraw
        k = d.given(rng.choice(divisors))
        group = rng.choice(GROUPS)
        if rng.random() < 0.7:
            if not d.steps and d.sentences and rng.random() < 0.5:  # "Anna shares 24 candies equally among 4 friends."
                d.sentences.pop()
                d.forms.pop()
                d.say("share_named", noun.kind, k=d.value(k), group=group, N=noun.amount(total), **common)
            else:
                d.say("share", noun.kind, they, k=d.value(k), group=group, N=noun.amount(total), **common, **pron)
            d.derive("/", current, k, "Each of the {group} gets {eq} {X}.", group=group, **common)
            d.say("ask_each", noun.kind, they, group=group, **common, **pron)
        else:
            container, containers = rng.choice(CONTAINERS)
            d.say("bags", noun.kind, they, k=d.value(k), Cs=containers, **common, **pron)
            d.derive("/", current, k, "{P} fills {eq} {Cs}.", Cs=containers, **{**common, **pron, "P": a["A"]})
            d.say("ask_bags", noun.kind, they, Cs=containers, **common, **pron)
    else:
        _compare_ending(d, rng, noun, current, ending, common)
    return _finish(d, rng, common)


def _event(d: _Draft, rng: random.Random, noun: _Noun, current: str, common: dict, pron: dict, they: bool) -> str:
    """One change to A's quantity: gains, losses, boxes bought, half given away."""
    kind = rng.choice(["gain", "gain", "lose", "lose", "boxes", "half"])
    if noun.money and kind in ("boxes", "half"):
        kind = "gain"
    if kind in ("gain", "lose"):
        k = d.given(rng.randint(2, 30), money=noun.money)
        d.say(kind, noun.kind, they, K=noun.bare(d.value(k)), **common, **pron)
        if kind == "gain":
            return d.derive("+", current, k, "{A} has {eq} {X} now." if not noun.money else "{A} has {eq} now.", money=noun.money, **common)
        return d.derive("-", current, k, "{A} has {eq} {X} left." if not noun.money else "{A} has {eq} left.", money=noun.money, **common)
    if kind == "boxes":
        _, containers = rng.choice(CONTAINERS)
        count, size = d.given(rng.randint(2, 6)), d.given(rng.randint(2, 12))
        d.say("boxes", noun.kind, they, k=d.value(count), m=d.value(size), Cs=containers, **common, **pron)
        extra = d.derive("*", count, size, "{k} {Cs} of {m} hold {eq} {X}.", k=d.value(count), m=d.value(size), Cs=containers, **common)
        return d.derive("+", current, extra, "{A} has {eq} {X} now.", **common)
    two = d.given(2, role="implicit")
    d.say("half", noun.kind, they, **common, **pron)
    half = d.derive("/", current, two, "Half of {v} is {eq}.", v=d.value(current))
    return d.derive("-", current, half, "{A} has {eq} {X} left.", **common)


def _compare_ending(d: _Draft, rng: random.Random, noun: _Noun, current: str, ending: str, common: dict) -> None:
    """A second person compared with A (or with their own amount), and a question about them."""
    a_value = d.value(current)
    unit_fields = {"N": noun.amount(a_value)}
    if ending == "diff":
        b_amount = d.given(rng.randint(1, max(1, a_value - 1)), money=noun.money)
        d.say("has", noun.kind, **{**common, "A": common["B"], "N": noun.amount(d.value(b_amount))})
        d.say("ask_diff", noun.kind, **common)
        d.derive("-", current, b_amount, "{A} has {eq} more {X} than {B}." if not noun.money else "{A} has {eq} more than {B}.", money=noun.money, **common)
        return
    so = "{A} has " + ("{v}" if noun.money else "{v} {X}") + ", so {B} has {eq}" + ("." if noun.money else " {X}.")
    v = noun.bare(a_value)
    if ending == "more":
        k = d.given(rng.randint(2, 20), money=noun.money)
        d.say("more", noun.kind, K=noun.bare(d.value(k)), k=d.value(k), **common)
        other = d.derive("+", current, k, so, money=noun.money, v=v, **common)
    elif ending == "fewer":
        k = d.given(rng.randint(2, max(2, a_value - 1)), money=noun.money)
        d.say("fewer", noun.kind, K=noun.bare(d.value(k)), k=d.value(k), **common)
        other = d.derive("-", current, k, so, money=noun.money, v=v, **common)
    elif ending == "times":
        times = rng.choice([2, 2, 3, 4])
        k = d.given(times, role="implicit")
        d.say("times", noun.kind, times={2: "twice", 3: "three times", 4: "four times"}[times], **common)
        other = d.derive("*", current, k, so, money=noun.money, v=v, **common)
    else:
        k = d.given(2, role="implicit")
        d.say("halfas", noun.kind, **common)
        other = d.derive("/", current, k, so, money=noun.money, v=v, **common)
    del unit_fields
    if rng.random() < 0.5:
        d.say("ask_other", noun.kind, **common)
    else:
        d.say("ask_total", noun.kind, **common)
        together = "Together they have {eq}" + ("." if noun.money else " {X}.")
        d.derive("+", current, other, together, money=noun.money, **common)


def _finish(d: _Draft, rng: random.Random, common: dict) -> WordProblem:
    if not 1 <= len(d.steps) <= 6:
        raise _Redraw
    if rng.random() < 0.35:  # a distractor sentence whose number nothing uses
        other_noun = _noun(rng, money_ok=False)
        while other_noun.plural == common["X"]:
            other_noun = _noun(rng, money_ok=False)
        c = _person(rng, {common["A"], common["B"]})["A"]
        value = rng.randint(2, 60)
        d.given(value, role="distractor")
        d.say("distractor", other_noun.kind, C=c, m=value, Y=other_noun.plural, **{k: common[k] for k in ("A", "rel")})
        sentence = d.sentences.pop()
        # Never between a pronoun and the name it refers to; a new person only comes first.
        places = [0] if c in sentence else [i for i, s in enumerate(d.sentences) if not _PRONOUN.search(s)] or [0]
        d.sentences.insert(rng.choice(places), sentence)
    asked = next(q.key for q in reversed(d.quantities) if q.role == "derived")
    answer = next(q.value for q in d.quantities if q.key == asked)
    return WordProblem(" ".join(d.sentences), tuple(d.quantities), asked, tuple(d.steps) + (f"\\boxed{{{answer}}}",), tuple(d.forms))


def split_of(problem: WordProblem) -> Split:
    """The split a problem belongs to: ``heldout`` if it uses a reserved form, else by a hash of its question."""
    if HELDOUT_FORMS.intersection(problem.forms):
        return "heldout"
    bucket = int.from_bytes(hashlib.sha256(problem.question.encode()).digest()[:4], "big") % 10
    return next(name for name, buckets in _SPLIT_BUCKETS.items() if bucket in buckets)  # type: ignore[misc]


def generate(split: Split, n: int, seed: int = 0) -> list[WordProblem]:
    """Generate ``n`` distinct problems of one split, reproducibly.

    Args:
        split: "train", "calibration", "test" or "heldout"; splits never share a question, and
            only "heldout" uses the reserved sentence forms.
        n: how many problems.
        seed: the same (split, n, seed) always gives the same list.

    Example:
        >>> problems = generate("test", 3, seed=0)
        >>> len(problems), problems[0].steps[-1].startswith("\\\\boxed")
        (3, True)
    """
    if split not in ("train", "calibration", "test", "heldout"):
        raise ConfigError(f"Unknown split {split!r}; choose train, calibration, test or heldout.")
    rng = random.Random(f"wordproblems:{split}:{seed}")
    seen: set[str] = set()
    problems: list[WordProblem] = []
    while len(problems) < n:
        try:
            problem = _draw(rng, heldout=split == "heldout")
        except _Redraw:
            continue
        if problem.question in seen or split_of(problem) != split:
            continue
        seen.add(problem.question)
        problems.append(problem)
    return problems


@dataclass(frozen=True)
class _Equation:
    a: int
    op: Op
    b: int
    result: int


def _parse(step: str) -> _Equation | None:
    """The step's one binary equation ("13 + 8 = 21", "$4 × 3 = $12"), or None (none, or more than one)."""
    found = _EQUATION.findall(step)
    if len(found) != 1 or len(_ANY_EQUALS.findall(step)) != 1:
        return None
    a, op, b, result = found[0]
    return _Equation(int(a), _OPS_IN_TEXT[op], int(b), int(result))  # type: ignore[arg-type]


def _known(problem: WordProblem, prior_steps: list[str] | tuple[str, ...]) -> tuple[dict[str, int], bool]:
    """Each quantity's value as the prior steps wrote it (given ones as stated); whether a prior step boxed an answer.

    A prior equation counts for the first not-yet-computed quantity it matches by operation and
    operands, whatever result it wrote (later steps build on the value as written); a prior step
    that matches nothing adds nothing.
    """
    known = {q.key: q.value for q in problem.quantities if q.role != "derived"}
    for prior in prior_steps:
        if _BOXED.match(prior.strip()):
            return known, True
        equation = _parse(prior)
        if equation is not None:
            match = _match(problem, known, equation)
            if match is not None:
                known[match.key] = equation.result
    return known, False


def _operands_fit(q: Quantity, known: dict[str, int], a: int, b: int) -> bool:
    left, right = known[q.inputs[0]], known[q.inputs[1]]
    return (a, b) == (left, right) or (q.op in ("+", "*") and (a, b) == (right, left))


def _ready(problem: WordProblem, known: dict[str, int]) -> list[Quantity]:
    """Quantities not yet computed whose inputs are known."""
    return [q for q in problem.derived if q.key not in known and all(k in known for k in q.inputs)]


def _match(problem: WordProblem, known: dict[str, int], eq: _Equation) -> Quantity | None:
    return next((q for q in _ready(problem, known) if q.op == eq.op and _operands_fit(q, known, eq.a, eq.b)), None)


_NAME_SET = frozenset(name for name, _ in NAMES)
_NOUN_LEMMAS = {word.split()[0]: plural.split()[0] for singular, plural in
                [*(pair for nouns in NOUNS.values() for pair in nouns), *CONTAINERS, *((u, us) for _, u, us in RATES)]
                for word in (singular, plural)}
"""A noun's first word, singular or plural → its plural's ("pen", "pens" → "pens"; "glass of water" → "glasses")."""
_NAME_WORD = re.compile(r"\b[A-Z][a-z]+\b")
_AFTER_RESULT = re.compile(r"\s+([a-z]+)")


def _people(question: str) -> frozenset[str]:
    """The first names a question mentions."""
    return frozenset(w for w in _NAME_WORD.findall(question) if w in _NAME_SET)


def _naming(people: frozenset[str], step: str) -> tuple[str | None, str | None]:
    """(person, noun) a step's equation is said of, each None when the step does not name one plainly.

    The person: the last of ``people`` before the equation, with no pronoun, comma or full stop
    between them ("so Tom has 13 + 8 = 21"), and none after it (a relation such as "5 more than
    Jim" may be said of either person). The noun: the word right after the result ("= 21
    marbles"), as its plural, when it is one of the task's nouns, containers or units.
    """
    found = _EQUATION.search(step)
    if found is None:
        return None, None
    head, tail = step[: found.start()], step[found.end() :]
    person = None
    names = [m for m in _NAME_WORD.finditer(head) if m.group() in people]
    between = head[names[-1].end() :] if names else ""
    if names and not re.search(r"[,.]", between) and not _PRONOUN.search(between) and not any(w in people for w in _NAME_WORD.findall(tail)):
        person = names[-1].group()
    after = _AFTER_RESULT.match(tail)
    noun = _NOUN_LEMMAS.get(after.group(1)) if after else None
    return person, noun


_DIFFERENCE = re.compile(r"\b(?:more|fewer|less)\b[^.]*\bthan\b")
"""A result said to be a difference between two amounts ("= 16 more muffins than Nate")."""


def _says_difference(step: str) -> bool:
    found = _EQUATION.search(step)
    return found is not None and _DIFFERENCE.search(step[found.end() :]) is not None


_CONTAINERS_HOLD = re.compile(r"\$?\d+ ([a-z]+)[a-z ]* of \$?\d+ hold\b")
"""A result said to fill containers ("5 crates of 7 hold 5 × 7 = 35"), with the containers' first word."""


def _containers(step: str) -> str | None:
    """The containers a step says its result fills, as their plural's first word; None when it says none."""
    found = _CONTAINERS_HOLD.search(step)
    return None if found is None else _NOUN_LEMMAS.get(found.group(1), found.group(1))


def _names_fit(problem: WordProblem, quantity: Quantity, step: str) -> bool:
    """Whether ``step`` says its result of the person and noun the gold step names for ``quantity`` (where both name one),
    and calls its result a difference, or the contents of containers, only where the gold step does (the same ones)."""
    people = _people(problem.question)
    gold_step = problem.steps[problem.derived.index(quantity)]
    if _says_difference(step) and not _says_difference(gold_step):
        return False
    if _containers(step) not in (None, _containers(gold_step)):
        return False
    gold = _naming(people, gold_step)
    said = _naming(people, step)
    return all(g is None or s is None or g == s for g, s in zip(gold, said))


def verify_step(problem: WordProblem, prior_steps: list[str] | tuple[str, ...], step: str) -> bool:
    """Whether ``step`` is a correct next step of ``problem`` given the steps before it, as written.

    Right: an equation computing a not-yet-computed quantity of the program whose inputs are
    known (given, or computed by a prior step, with the value that step wrote), with its
    operation (operands in either order for + and ×) and exact arithmetic, said of the right
    person and noun where it names them (see ``classify_step``); any such quantity may
    come next. The final step ``\\boxed{N}`` is right once the asked quantity is computed and N
    is its value as written. Everything else is wrong; ``classify_step`` says how.
    """
    return classify_step(problem, prior_steps, step) is None


def classify_step(problem: WordProblem, prior_steps: list[str] | tuple[str, ...], step: str) -> ErrorKind | None:
    """What is wrong with ``step`` (one of ``ERROR_KINDS``), or None when it is right.

    - ``malformed``: neither one binary equation nor ``\\boxed{N}``;
    - ``extra_step``: a step after the boxed answer, a quantity computed again, or an equation
      outside the program over known values;
    - ``skipped_step``: an answer boxed before the asked quantity is computed, or an equation
      using a value the solution has not reached yet (a quantity computed in the head);
    - ``wrong_operation``: a ready quantity's operands with another operation;
    - ``arithmetic_slip``: the right operation and operands, a wrong result (or a boxed number
      other than the computed answer);
    - ``wrong_quantity``: the right computation said of another quantity: another person than
      the one whose amount it is ("so Tom has 13 + 8 = 21" when it is Jim's), or another noun
      ("= 21 pens" when they are marbles). Checked where the gold step names the person (plainly:
      "Tom has ...", not "Together they have" or "Tom has 5 more than Jim") or the noun, and the
      step names one too; a step that names neither is not judged on it. Also wrong: a step
      calling its result a difference ("= 16 more muffins than Nate") where the quantity is not
      one, or the contents of containers the problem does not fill ("2 cases of 9 hold 2 × 9 =
      18" for 2 buttons an hour for 9 hours, "5 crates of 7" for 5 boxes of 7). Such a step has
      the right number but tells the next step it is something else;
    - ``wrong_operand``: the right operation with a number that is not the quantity's input
      (a distractor's, another entity's, a stale one), or any other equation.
    """
    known, boxed = _known(problem, prior_steps)
    if boxed:
        return "extra_step"
    text = step.strip()
    final = _BOXED.match(text)
    if final is not None:
        if problem.asked not in known:
            return "skipped_step"
        return None if int(final.group(1)) == known[problem.asked] else "arithmetic_slip"
    eq = _parse(text)
    if eq is None:
        return "malformed"
    ready = _ready(problem, known)
    matches = [q for q in ready if q.op == eq.op and _operands_fit(q, known, eq.a, eq.b)]
    if matches:
        if _apply(eq.op, eq.a, eq.b) != eq.result:
            return "arithmetic_slip"
        return None if any(_names_fit(problem, q, text) for q in matches) else "wrong_quantity"
    if any(_operands_fit(q, known, eq.a, eq.b) for q in ready):
        return "wrong_operation"
    computed = [q for q in problem.derived if q.key in known]
    if any(q.op == eq.op and _operands_fit(q, known, eq.a, eq.b) for q in computed):
        return "extra_step"
    # A value the solution has not reached: the gold value of a quantity not computed yet.
    pending = {q.value for q in problem.derived if q.key not in known} - set(known.values())
    if eq.a in pending or eq.b in pending:
        return "skipped_step"
    if not ready and _apply(eq.op, eq.a, eq.b) == eq.result:
        return "extra_step"
    values = set(known.values())
    if eq.a in values and eq.b in values and _apply(eq.op, eq.a, eq.b) == eq.result and not any(q.op == eq.op for q in ready):
        return "extra_step"
    return "wrong_operand"


def boxed_value(step: str) -> int | None:
    """The integer in the step's last ``\\boxed{}``, or None."""
    found = re.findall(r"\\boxed\{\$?(\d+)\}", step)
    return int(found[-1]) if found else None


def is_final_step(step: str) -> bool:
    """Whether a step holds a final ``\\boxed{}`` answer."""
    return "\\boxed{" in step
