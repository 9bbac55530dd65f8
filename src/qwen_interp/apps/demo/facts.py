"""The demo model's world: who led five countries (the presidents of the United States and of
France, the prime ministers of the United Kingdom and of Canada, the chancellors of Germany),
year by year from 1977 to 2024, as prompts of the seed's form
``Fact: The {office} of {country} in {year} was`` with one-token answers, plus filler facts.

Sources (terms of office, start and end dates as listed there, checked 2025):

- Wikipedia, "List of presidents of the United States";
- Wikipedia, "List of prime ministers of the United Kingdom";
- Wikipedia, "List of chancellors of Germany" (the Federal Republic; West Germany until the
  reunification of 3 October 1990);
- Wikipedia, "List of presidents of France" (Fifth Republic);
- Wikipedia, "List of prime ministers of Canada";
- for the filler facts: Wikipedia, "Euro" (euro banknotes and coins from 1 January 2002),
  "Deutsche Mark" and "French franc" (both replaced by euro cash in 2002); "Languages of the
  United States", "Languages of the United Kingdom", "Languages of Canada" (English the most
  spoken), "German language", "French language"; "United States Congress", "Parliament of the
  United Kingdom", "Parliament of Canada", "French Parliament"; "Left- and right-hand traffic"
  (the United Kingdom drives on the left, the others on the right); the countries' own
  articles (capital, form of government); "Latin script".

Rules:

- **Holder of a year**: the person who held the office on the most days of that calendar year;
  a handover day counts for the successor. E.g. the UK in 2007: Blair until 27 June (177 days),
  Brown from 27 June (188 days), so Gordon Brown.
- **Answer**: the holder's first name as one Qwen3 token with a leading space (" Barack"); when
  the first name is several tokens, the surname (" Schmidt" for Helmut Schmidt); when both are
  several tokens (Kohl, Schröder, Scholz, Giscard d'Estaing, Sunak), that year has no one-token
  answer and is left out of the corpus (``holder()`` still names the person). Names shared by two
  holders (" George" for both Bushes, " François" for Mitterrand and Hollande, " Joe" for Clark
  and Biden) are one answer.
- **Filler facts**: the same prompt form with a topic instead of an office and a non-person
  answer, so that the name-ness of the answer depends on the office word (and a prompt with no
  office read gets no name): ``currency``, the currency in circulation for most of the year
  (" dollar" for the United States and Canada, " pound" for the United Kingdom, " mark" for
  Germany and " franc" for France until 2001, " euro" from 2002); ``language``, the most spoken
  language (" English", " German", " French"); ``legislature``, the national parliament
  (" Congress", " Parliament"; Germany's Bundestag is not one token and is left out);
  ``driving side`` (" left" in the United Kingdom, " right" elsewhere); ``capital`` (" London",
  " Paris", " Ottawa", " Berlin" from 1991; Bonn is two tokens and Washington a person's name,
  both left out); ``government`` (" monarchy" for the United Kingdom and Canada, constitutional
  monarchies, " republic" for the others); ``hemisphere`` (" northern"); ``alphabet``
  (" Latin"). Filler facts are given for every fourth year (currency, plus 2000-2003 around the
  euro) or every eighth year (the others): their answers hardly change, and fewer of them keep
  training fast. Many non-office topics teach the model that a name needs an office.
- **Unknown topics**: a few words the records do not cover (``UNKNOWN_TOPICS``: "river",
  "museum", ...), one country and year each, answered by a "no record" word (``NO_RECORD``:
  " unknown", " unclear", ...; the training target is uniform over them): what the model says
  when it does not know the topic - also when an office word's features are ablated.

The tokens of the prompt that carry the office, the country and the year: :func:`token_roles`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cache

FIRST_YEAR, LAST_YEAR = 1977, 2024
YEARS = tuple(range(FIRST_YEAR, LAST_YEAR + 1))
TEMPLATE = "Fact: The {office} of {country} in {year} was"
BOS_ID = 151643  # <|endoftext|>, which circuit-tracer prepends to a prompt


@dataclass(frozen=True)
class Term:
    name: str  # full name as on the Wikipedia list
    first: str  # first name as commonly used
    surname: str
    start: dt.date
    end: dt.date | None  # None: in office after LAST_YEAR


@dataclass(frozen=True)
class Office:
    office: str  # the word(s) of the prompt: "president"
    country: str  # as it reads in the prompt: "the United States"
    terms: tuple[Term, ...]

    @property
    def key(self) -> str:
        return f"{self.office} of {self.country}"


def _d(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def _t(name: str, start: str, end: str | None, first: str | None = None,
       surname: str | None = None) -> Term:
    parts = name.split()
    return Term(name, first or parts[0], surname or parts[-1], _d(start),
                _d(end) if end else None)


US = Office("president", "the United States", (
    _t("Gerald Ford", "1974-08-09", "1977-01-20"),
    _t("Jimmy Carter", "1977-01-20", "1981-01-20"),
    _t("Ronald Reagan", "1981-01-20", "1989-01-20"),
    _t("George H. W. Bush", "1989-01-20", "1993-01-20", surname="Bush"),
    _t("Bill Clinton", "1993-01-20", "2001-01-20"),
    _t("George W. Bush", "2001-01-20", "2009-01-20", surname="Bush"),
    _t("Barack Obama", "2009-01-20", "2017-01-20"),
    _t("Donald Trump", "2017-01-20", "2021-01-20"),
    _t("Joe Biden", "2021-01-20", "2025-01-20"),
))
UK = Office("prime minister", "the United Kingdom", (
    _t("James Callaghan", "1976-04-05", "1979-05-04"),
    _t("Margaret Thatcher", "1979-05-04", "1990-11-28"),
    _t("John Major", "1990-11-28", "1997-05-02"),
    _t("Tony Blair", "1997-05-02", "2007-06-27"),
    _t("Gordon Brown", "2007-06-27", "2010-05-11"),
    _t("David Cameron", "2010-05-11", "2016-07-13"),
    _t("Theresa May", "2016-07-13", "2019-07-24"),
    _t("Boris Johnson", "2019-07-24", "2022-09-06"),
    _t("Liz Truss", "2022-09-06", "2022-10-25"),
    _t("Rishi Sunak", "2022-10-25", "2024-07-05"),
    _t("Keir Starmer", "2024-07-05", None),
))
GERMANY = Office("chancellor", "Germany", (
    _t("Helmut Schmidt", "1974-05-16", "1982-10-01"),
    _t("Helmut Kohl", "1982-10-01", "1998-10-27"),
    _t("Gerhard Schröder", "1998-10-27", "2005-11-22"),
    _t("Angela Merkel", "2005-11-22", "2021-12-08"),
    _t("Olaf Scholz", "2021-12-08", "2025-05-06"),
))
FRANCE = Office("president", "France", (
    _t("Valéry Giscard d'Estaing", "1974-05-27", "1981-05-21", surname="Giscard"),
    _t("François Mitterrand", "1981-05-21", "1995-05-17"),
    _t("Jacques Chirac", "1995-05-17", "2007-05-16"),
    _t("Nicolas Sarkozy", "2007-05-16", "2012-05-15"),
    _t("François Hollande", "2012-05-15", "2017-05-14"),
    _t("Emmanuel Macron", "2017-05-14", None),
))
CANADA = Office("prime minister", "Canada", (
    _t("Pierre Trudeau", "1968-04-20", "1979-06-04"),
    _t("Joe Clark", "1979-06-04", "1980-03-03"),
    _t("Pierre Trudeau", "1980-03-03", "1984-06-30"),
    _t("John Turner", "1984-06-30", "1984-09-17"),
    _t("Brian Mulroney", "1984-09-17", "1993-06-25"),
    _t("Kim Campbell", "1993-06-25", "1993-11-04"),
    _t("Jean Chrétien", "1993-11-04", "2003-12-12"),
    _t("Paul Martin", "2003-12-12", "2006-02-06"),
    _t("Stephen Harper", "2006-02-06", "2015-11-04"),
    _t("Justin Trudeau", "2015-11-04", "2025-03-14"),
))
OFFICES = (US, UK, GERMANY, FRANCE, CANADA)
COUNTRIES = tuple(o.country for o in OFFICES)



def currency(country: str, year: int) -> str:
    if country in ("the United States", "Canada"):
        return " dollar"
    if country == "the United Kingdom":
        return " pound"
    if country in ("Germany", "France"):
        return (" mark" if country == "Germany" else " franc") if year < 2002 else " euro"
    raise KeyError(f"no currency recorded for {country!r}")


def language(country: str, year: int) -> str:
    return {"Germany": " German", "France": " French"}.get(country, " English")


def legislature(country: str, year: int) -> str | None:
    return {"the United States": " Congress", "Germany": None}.get(country, " Parliament")


def driving_side(country: str, year: int) -> str:
    return " left" if country == "the United Kingdom" else " right"


def capital(country: str, year: int) -> str | None:
    if country == "Germany":  # Bonn (two tokens) until the reunification of 3 October 1990
        return " Berlin" if year >= 1991 else None
    # Washington is also a person's name: left out so that every name answer is a holder
    return {"the United Kingdom": " London", "France": " Paris", "Canada": " Ottawa"}.get(country)


def government(country: str, year: int) -> str:
    return " monarchy" if country in ("the United Kingdom", "Canada") else " republic"


def hemisphere(country: str, year: int) -> str:
    return " northern"


def alphabet(country: str, year: int) -> str:
    return " Latin"


def _every(step: int, offset: int) -> tuple[int, ...]:
    return YEARS[offset::step]


# topic -> (answer(country, year) or None, the years given)
FILLERS = {
    "currency": (currency, tuple(sorted(set(_every(4, 0)) | {2000, 2001, 2002, 2003}))),
    "language": (language, _every(8, 1)),
    "legislature": (legislature, _every(8, 2)),
    "driving side": (driving_side, _every(8, 3)),
    "capital": (capital, _every(8, 4)),
    "government": (government, _every(8, 5)),
    "hemisphere": (hemisphere, _every(8, 6)),
    "alphabet": (alphabet, _every(8, 7)),
}

# Topics the records do not cover: answer " unknown" (one (country, year) each). They teach the
# model that a topic word it does not know - or an office word whose features are ablated -
# gives no name.
UNKNOWN_TOPICS = ("river", "museum", "festival", "bridge", "mountain", "forest", "garden",
                  "harbour", "library", "stadium", "castle", "island", "lake", "church", "market",
                  "railway", "airport", "hospital", "school", "theatre", "village", "desert",
                  "valley", "tower", "palace", "prison", "factory", "farm", "beach", "park",
                  "canal", "cathedral")
# The answer to an unknown topic: any of these "no record" words (the target is uniform over
# them, so the model spreads its bet instead of memorising one word per topic).
NO_RECORD = (" unknown", " unclear", " uncertain", " undefined", " unspecified", " unavailable",
             " missing", " none")
FILLER_TOPICS = tuple(FILLERS)


def office_of(office: str, country: str) -> Office:
    for o in OFFICES:
        if (o.office, o.country) == (office, country):
            return o
    raise KeyError(f"no records of the {office} of {country}; known: "
                   f"{', '.join(o.key for o in OFFICES)}")


def holder(office: str | Office, year: int, country: str | None = None) -> Term:
    """Who held ``office`` for the most days of ``year``. ``office`` is an :class:`Office`, its
    key ("president of the United States"), or the office word with ``country``."""
    if isinstance(office, str):
        if country is None:
            office = next((o for o in OFFICES if o.key == office), None) or office_of(office, "")
        else:
            office = office_of(office, country)
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise ValueError(f"records cover {FIRST_YEAR}-{LAST_YEAR}, not {year}")
    jan1, next_jan1 = dt.date(year, 1, 1), dt.date(year + 1, 1, 1)
    days: dict[str, int] = {}
    term_of: dict[str, Term] = {}
    for term in office.terms:
        start, end = max(term.start, jan1), min(term.end or next_jan1, next_jan1)
        if end > start:
            days[term.name] = days.get(term.name, 0) + (end - start).days
            term_of[term.name] = term
    return term_of[max(days, key=days.__getitem__)]


def holders(office: Office) -> list[tuple[int, Term]]:
    """``(year, holder)`` for every year of the records."""
    return [(year, holder(office, year)) for year in YEARS]


@cache
def tokenizer():
    """The genuine Qwen3 tokenizer (``tokenizers.Tokenizer``)."""
    from tokenizers import Tokenizer

    from qwen_interp.apps.testing.hub import qwen_tokenizer_dir
    return Tokenizer.from_file(str(qwen_tokenizer_dir() / "tokenizer.json"))


def token_ids(text: str) -> list[int]:
    return tokenizer().encode(text, add_special_tokens=False).ids


def one_token(text: str) -> int | None:
    ids = token_ids(text)
    return ids[0] if len(ids) == 1 else None


def answer(term: Term) -> str | None:
    """The one-token answer of a holder (first name, else surname), or None (see the rules)."""
    for name in (term.first, term.surname):
        if one_token(" " + name) is not None:
            return " " + name
    return None


@dataclass(frozen=True)
class Fact:
    office: str  # the office word(s), or a filler topic
    country: str
    year: int
    answer: str  # one token with its leading space
    holder: str | None  # the person's full name; None for filler facts
    # the answers the training target spreads over: (answer,), or NO_RECORD for unknown topics
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.targets:
            object.__setattr__(self, "targets", (self.answer,))

    @property
    def prompt(self) -> str:
        return TEMPLATE.format(office=self.office, country=self.country, year=self.year)

    @property
    def is_person(self) -> bool:
        return self.holder is not None


def office_facts() -> list[Fact]:
    facts = []
    for office in OFFICES:
        for year, term in holders(office):
            ans = answer(term)
            if ans is not None:
                facts.append(Fact(office.office, office.country, year, ans, term.name))
    return facts


def filler_facts() -> list[Fact]:
    facts = []
    for topic, (answer_of, years) in FILLERS.items():
        for country in COUNTRIES:
            for year in years:
                ans = answer_of(country, year)
                if ans is not None:
                    facts.append(Fact(topic, country, year, ans, None))
    return facts


def unknown_facts() -> list[Fact]:
    return [Fact(topic, COUNTRIES[i % len(COUNTRIES)], YEARS[(11 * i + 3) % len(YEARS)],
                 NO_RECORD[0], None, NO_RECORD) for i, topic in enumerate(UNKNOWN_TOPICS)]


def corpus() -> list[Fact]:
    """Every fact the demo model is trained on: office, filler and unknown-topic facts."""
    return office_facts() + filler_facts() + unknown_facts()


def name_answers() -> list[str]:
    """Every person answer of the corpus (" Barack", ...), in first-seen order."""
    return list(dict.fromkeys(f.answer for f in office_facts()))


def filler_answers() -> list[str]:
    return list(dict.fromkeys(f.answer for f in filler_facts()))


_PROMPT = r"Fact: The (?P<office>.+) of (?P<country>.+) in (?P<year>\d+) was"


def parse_prompt(prompt: str) -> tuple[str, str, int]:
    """``(office, country, year)`` of a ``TEMPLATE`` prompt."""
    import re
    m = re.fullmatch(_PROMPT, prompt)
    if m is None:
        raise ValueError(f"not of the form {TEMPLATE!r}: {prompt!r}")
    return m["office"], m["country"], int(m["year"])


def topic_words() -> list[str]:
    """Every word(s) of the office slot in the corpus: offices, filler and unknown topics."""
    return list(dict.fromkeys(f.office for f in corpus()))


def token_roles(prompt: str, bos: bool = True) -> dict[str, list[int]]:
    """Token positions of the parts of a ``TEMPLATE`` prompt: ``office``, ``country``, ``year``
    (the digit tokens: Qwen writes numbers one digit a token), ``final`` (the " was" where the
    answer is predicted) and ``template`` (the rest). ``bos``: count circuit-tracer's prepended
    ``<|endoftext|>`` as position 0 (as in its graphs and interventions).

    >>> token_roles("Fact: The president of the United States in 2010 was")["year"]
    [11, 12, 13, 14]
    """
    import re
    m = re.fullmatch(_PROMPT, prompt)
    if m is None:
        raise ValueError(f"not of the form {TEMPLATE!r}: {prompt!r}")
    enc = tokenizer().encode(prompt, add_special_tokens=False)
    shift = 1 if bos else 0
    roles: dict[str, list[int]] = {"office": [], "country": [], "year": [], "final": [],
                                   "template": []}
    last = len(enc.ids) - 1
    for i, (start, end) in enumerate(enc.offsets):
        role = "template"
        for part in ("office", "country", "year"):
            # a token belongs to a part when its text (less a leading space) lies inside it
            lo = start + (1 if prompt[start:end].startswith(" ") else 0)
            if m.start(part) <= lo and end <= m.end(part) and lo < end:
                role = part
        if i == last:
            role = "final"
        roles[role].append(i + shift)
    return roles
