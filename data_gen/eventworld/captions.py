"""News-style captions for EventWorld scenes, with exact character spans for trigger and arguments.

A caption template is a string with tokens: `{Role}` / `{Role.2}` (first / second filler of a role),
`{T:sing|plur}` (the trigger, agreeing in number with the template's subject), `{V:sing|plur}` (another
verb that agrees), `{Place}` (preposition + place phrase; only the phrase is the argument) and `{DAY}`.
Spans are recorded while the caption is assembled, so `caption[start:end] == text` holds by construction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from align.ontology import Ontology
from align.schema import Argument
from data_gen.eventworld.draw import HELD_TYPES, PERSON_TYPES, STANDALONE_TYPES, Color
from data_gen.grammar import phrase_number

VISIBLE_TYPES = PERSON_TYPES + HELD_TYPES + STANDALONE_TYPES + ("place",)

# name, adjective, cities (capital, coastal/port city, other), desert nearby, flag stripes
COUNTRIES: tuple[tuple[str, str, tuple[str, str, str], bool, tuple[Color, Color, Color]], ...] = (
    ("Kenya", "Kenyan", ("Nairobi", "Mombasa", "Garissa"), True, ((20, 20, 20), (190, 0, 0), (0, 110, 40))),
    ("Nigeria", "Nigerian", ("Abuja", "Lagos", "Kano"), True, ((0, 135, 80), (250, 250, 250), (0, 135, 80))),
    ("Mali", "Malian", ("Bamako", "Mopti", "Gao"), True, ((20, 160, 70), (252, 210, 20), (206, 16, 38))),
    ("Ukraine", "Ukrainian", ("Kyiv", "Odesa", "Kharkiv"), False, ((0, 90, 180), (0, 90, 180), (255, 214, 0))),
    ("France", "French", ("Paris", "Marseille", "Lyon"), False, ((0, 60, 150), (250, 250, 250), (230, 30, 50))),
    ("Brazil", "Brazilian", ("Brasilia", "Santos", "Recife"), False, ((0, 150, 60), (254, 221, 0), (0, 39, 118))),
    ("India", "Indian", ("New Delhi", "Mumbai", "Jaipur"), True, ((255, 153, 51), (250, 250, 250), (19, 136, 8))),
    ("Egypt", "Egyptian", ("Cairo", "Alexandria", "Aswan"), True, ((206, 17, 38), (250, 250, 250), (20, 20, 20))),
    ("Mexico", "Mexican", ("Mexico City", "Veracruz", "Hermosillo"), True,
     ((0, 104, 71), (250, 250, 250), (206, 17, 38))),
    ("the Philippines", "Filipino", ("Manila", "Cebu", "Davao"), False,
     ((0, 56, 168), (250, 250, 250), (206, 17, 38))),
    ("Iraq", "Iraqi", ("Baghdad", "Basra", "Mosul"), True, ((206, 17, 38), (250, 250, 250), (20, 20, 20))),
    ("Colombia", "Colombian", ("Bogota", "Cartagena", "Medellin"), False,
     ((252, 209, 22), (252, 209, 22), (0, 56, 147))),
)
# per country: (male first names, female first names, surnames)
NAMES: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    (("David", "Samuel", "Peter"), ("Amina", "Grace", "Wanjiru"), ("Ochieng", "Mwangi", "Kamau")),
    (("Chinedu", "Ibrahim", "Tunde"), ("Ngozi", "Aisha", "Funmi"), ("Okafor", "Bello", "Adeyemi")),
    (("Moussa", "Oumar", "Seydou"), ("Fatoumata", "Aminata", "Mariam"), ("Traore", "Keita", "Diallo")),
    (("Oleksandr", "Andriy", "Dmytro"), ("Olena", "Iryna", "Natalia"), ("Kovalenko", "Shevchenko", "Bondarenko")),
    (("Jean", "Pierre", "Luc"), ("Marie", "Claire", "Sophie"), ("Dubois", "Martin", "Lefevre")),
    (("Joao", "Carlos", "Rafael"), ("Ana", "Juliana", "Fernanda"), ("Silva", "Santos", "Oliveira")),
    (("Rahul", "Arjun", "Vikram"), ("Priya", "Anjali", "Kavya"), ("Sharma", "Patel", "Reddy")),
    (("Ahmed", "Mahmoud", "Omar"), ("Fatma", "Mona", "Yasmin"), ("Hassan", "Mostafa", "Fahmy")),
    (("Jose", "Miguel", "Luis"), ("Maria", "Guadalupe", "Sofia"), ("Hernandez", "Lopez", "Garcia")),
    (("Jose", "Mark", "Paolo"), ("Maria", "Andrea", "Kristine"), ("Santos", "Reyes", "Cruz")),
    (("Ali", "Hussein", "Karim"), ("Zainab", "Noor", "Huda"), ("Jaburi", "Hamid", "Kadhim")),
    (("Andres", "Juan", "Diego"), ("Camila", "Valentina", "Paula"), ("Rodriguez", "Gomez", "Martinez")),
)
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
TITLES = ("Foreign Minister", "Interior Minister", "Finance Minister", "President", "Senator", "Governor", "Mayor")

# place kind -> (preposition, phrase with {city})
PLACE_PHRASES = {
    "street": ("on", "a street in {city}"),
    "desert": ("in", "the desert outside {city}"),
    "parliament": ("outside", "parliament in {city}"),
    "market": ("at", "a market in {city}"),
    "port": ("at", "the port of {city}"),
}
# building style -> how a caption names it as a Transport origin or destination. Never the bare "building" (every
# style is one): the phrase must say what the picture draws at that end of the trip, or an Origin/Destination
# role swap would differ only in city names, which no picture shows.
BUILDING_PLACES: dict[str, tuple[str, ...]] = {
    "house": ("a house", "a family home"),
    "depot": ("a depot", "a warehouse"),
    "office": ("an office building", "an office block"),
    "clinic": ("a clinic", "a health centre"),
}

# entity type -> (singular nouns, plural nouns); singular nouns get an article
PERSON_NOUNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "police": (("police officer", "policeman"), ("police officers", "police", "riot police")),
    "soldier": (("soldier", "soldier"), ("soldiers", "troops")),
    "protester": (("protester", "demonstrator", "activist"), ("protesters", "demonstrators", "activists")),
    "official": (("official", "government official"), ("officials", "government officials")),
    "civilian": (("resident", "shopkeeper", "local resident"), ("civilians", "residents", "villagers")),
    "journalist": (("journalist", "photographer", "reporter"), ("journalists", "reporters", "photographers")),
}
# object entity type -> style -> (singular nouns, plural nouns)
OBJECT_NOUNS: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "weapon": {"rifle": (("rifle", "assault rifle"), ("rifles", "assault rifles")),
               "pistol": (("pistol", "handgun"), ("pistols", "handguns"))},
    "vehicle": {"truck": (("truck", "lorry"), ("trucks",)), "military": (("military truck", "army truck"), ("trucks",)),
                "van": (("police van", "police car"), ("police vans",)), "car": (("car",), ("cars",)),
                "bus": (("bus",), ("buses",))},
    "money": {"cash": (("cash", "money", "banknotes", "a wad of cash"), ("cash", "bundles of cash"))},
    "phone": {"phone": (("mobile phone", "phone", "cellphone", "satellite phone"), ("phones",))},
    "sign": {"sign": (("placard", "sign"), ("placards", "signs", "protest signs", "banners"))},
    "building": {"house": (("house", "building"), ("houses",)), "office": (("office building", "building"), ()),
                 "clinic": (("clinic", "health centre"), ()), "depot": (("warehouse", "depot"), ())},
}
_MASS = {"cash", "money", "banknotes", "a wad of cash", "bundles of cash"}
PLURAL_WORDS = {w.split()[-1] for _, plur in PERSON_NOUNS.values() for w in plur} | {
    w.split()[-1] for styles in OBJECT_NOUNS.values() for _, plur in styles.values() for w in plur}

_TOKEN = re.compile(r"\{([^}]+)\}")

# event type -> [(subject role, template)]
TEMPLATES: dict[str, tuple[tuple[str, str], ...]] = {
    "Conflict.Attack": (
        ("Attacker", "{Attacker} {T:opens fire|open fire} on {Target} {Place} {DAY}."),
        ("Attacker", "{Attacker} armed with {Instrument} {T:attacks|attack} {Target} {Place} {DAY}, witnesses said."),
        ("Target", "{Target} {V:is|are} {T:attacked} by {Attacker} with {Instrument} {Place} {DAY}."),
        ("Attacker", "{Attacker} {T:shoots|shoot} at {Target} with {Instrument} {Place} {DAY}."),
    ),
    "Conflict.Demonstrate": (
        ("Entity", "{Entity} holding {Instrument} {T:protests|protest} in front of {Police} {Place} {DAY}."),
        ("Entity", "{Entity} {T:rallies|rally} against the government {Place} {DAY} as {Police} look on."),
        ("Police", "{Police} {V:faces|face} {Entity} carrying {Instrument} during a {T:demonstration} {Place} {DAY}."),
        ("Entity", "{Entity} with {Instrument} {T:demonstrates|demonstrate} against price rises {Place} {DAY}, "
                   "watched by {Police}."),
    ),
    "Contact.Meet": (
        ("Participant", "{Participant} {T:meets|meet} {Participant.2} {Place} {DAY}."),
        ("Participant", "{Participant} and {Participant.2} shake hands before a {T:meeting} {Place} {DAY}."),
        ("Participant", "{Participant} {T:meets|meet} with {Participant.2} for talks {Place} {DAY}."),
    ),
    "Contact.Phone-Write": (
        ("Entity", "{Entity} {T:speaks|speak} on {Instrument} {Place} {DAY}."),
        ("Entity", "{Entity} {T:calls|call} relatives using {Instrument} {Place} {DAY}."),
        ("Entity", "{Entity} {T:talks|talk} on {Instrument} {Place} {DAY} amid the crisis."),
    ),
    "Justice.Arrest-Jail": (
        ("Agent", "{Agent} {T:detains|detain} {Person} {Place} {DAY}."),
        ("Person", "{Person} {V:is|are} {T:arrested} by {Agent} {Place} {DAY}."),
        ("Agent", "{Agent} {T:handcuffs|handcuff} {Person} {Place} {DAY}."),
        ("Agent", "{Agent} {T:arrests|arrest} {Person} {Place} {DAY}, beside {Instrument}."),
    ),
    "Life.Die": (
        ("Victim", "{Victim} {V:was|were} {T:killed} by {Agent} with {Instrument} {Place} {DAY}."),
        ("Agent", "{Agent} {T:kills|kill} {Victim} {Place} {DAY}, witnesses said."),
        ("Victim", "The body of {Victim} {T:killed} in clashes lies {Place} {DAY}."),
        ("Victim", "{Victim} {V:lies|lie} {T:dead} {Place} {DAY} after a shooting."),
    ),
    "Movement.Transport": (
        ("Agent", "{Agent} {T:transports|transport} {Artifact} in {Vehicle} from {Origin} to {Destination} {DAY}."),
        ("Artifact", "{Artifact} {V:is|are} {T:evacuated} in {Vehicle} from {Origin} to {Destination} {DAY}."),
        ("Vehicle", "{Vehicle} {T:carrying} {Artifact} {V:heads|head} from {Origin} to {Destination} {DAY}."),
        ("Agent", "{Agent} {T:drives|drive} {Artifact} from {Origin} to {Destination} in {Vehicle} {DAY}."),
        ("Vehicle", "{Vehicle} {T:carrying} {Artifact} {V:leaves|leave} {Origin} for {Destination} {DAY}."),
    ),
    "Transaction.Transfer-Money": (
        ("Giver", "{Giver} {T:hands|hand} {Money} to {Recipient} {Place} {DAY}."),
        ("Giver", "{Giver} {T:pays|pay} {Recipient} {Place} {DAY}."),
        ("Recipient", "{Recipient} {T:receives|receive} {Money} from {Giver} {Place} {DAY}."),
        ("Giver", "{Giver} {T:gives|give} {Money} to {Recipient} {Place} {DAY}."),
    ),
}


def template_roles(template: str) -> list[str]:
    """Role tokens of a template in order (`Participant.2` kept as written)."""
    return [t for t in _TOKEN.findall(template) if ":" not in t and t != "DAY"]


def article(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeio" else "a ") + noun


@dataclass
class Filler:
    """What the caption needs to know about one argument filler (entity or place)."""

    entity_type: str
    count: int = 1
    variant: int = 0
    style: str = ""
    nationality: str | None = None
    name: str | None = None
    title: str | None = None
    female: bool = False


def building_place(style: str, city: str, variant: int) -> str:
    """'a depot in Kharkiv': the drawn building and the city of a Transport origin or destination."""
    nouns = BUILDING_PLACES[style]
    return f"{nouns[variant % len(nouns)]} in {city}"


def building_style(text: str) -> str | None:
    """The building style a place phrase names ('A warehouse in Kyiv' -> 'depot'); None when it names none."""
    low = " ".join(text.lower().split())
    return next((style for style, nouns in BUILDING_PLACES.items() if any(low.startswith(n + " ") for n in nouns)),
                None)


def phrase(f: Filler) -> str:
    """The noun phrase for a filler: 'Kenyan police officers', 'Foreign Minister Amina Ochieng', 'a rifle'."""
    if f.entity_type == "place":
        return f.name or "somewhere"
    if f.entity_type in PERSON_NOUNS:
        sing, plur = PERSON_NOUNS[f.entity_type]
        if f.count > 1:
            noun = plur[f.variant % len(plur)]
            return f"{f.nationality} {noun}" if f.nationality else noun
        if f.name:
            if f.entity_type == "official":
                return f"{f.nationality + ' ' if f.nationality else ''}{f.title} {f.name}"
            role = {"journalist": "photojournalist", "civilian": "resident", "police": "police officer",
                    "soldier": "soldier", "protester": "activist"}[f.entity_type]
            return f"{role} {f.name}"
        if f.entity_type == "civilian" and f.variant % 4 == 3:
            return "a woman" if f.female else "a man"
        noun = sing[f.variant % len(sing)]
        return article(f"{f.nationality} {noun}" if f.nationality else noun)
    styles = OBJECT_NOUNS[f.entity_type]
    sing, plur = styles.get(f.style) or next(iter(styles.values()))
    if f.count > 1 and plur:
        return plur[f.variant % len(plur)]
    noun = sing[f.variant % len(sing)]
    return noun if noun in _MASS or noun.startswith("a ") else article(noun)


def subject_plural(f: Filler) -> bool:
    """Whether the verbs of a caption whose subject is `f` take the plural. By the words of its phrase, not by how
    many are drawn: two wads of "cash" take "is", one "banknotes" takes "are". The same rule
    (`grammar.phrase_number`) re-inflects the verb in caption-edit negatives, so negatives never fix what their
    positive gets wrong, or the other way round; the drawn count decides only where that rule cannot tell."""
    number = phrase_number(phrase(f))
    return f.count > 1 if number is None else number == "plur"


def compose(template: str, subject: str, fillers: dict[str, list[Filler]], place_kind: str, day: str
            ) -> tuple[str, tuple[str, int, int], list[tuple[str, int, int, str, int]]]:
    """Assemble a caption; returns (caption, (trigger, start, end), [(role, start, end, text, filler index)])."""
    plural = subject_plural(fillers[subject][0]) if fillers.get(subject) else False
    out: list[str] = []
    pos = 0
    trigger = ("", 0, 0)
    args: list[tuple[str, int, int, str, int]] = []
    last = 0
    for m in _TOKEN.finditer(template):
        literal = template[last:m.start()]
        out.append(literal)
        pos += len(literal)
        last = m.end()
        token = m.group(1)
        if token == "DAY":
            text = f"on {day}"
        elif token.startswith(("T:", "V:")):
            forms = token[2:].split("|")
            text = forms[1] if plural and len(forms) > 1 else forms[0]
            if token[0] == "T":
                trigger = (text, pos, pos + len(text))
        else:
            role, _, nth = token.partition(".")
            i = int(nth) - 1 if nth else 0
            text = phrase(fillers[role][i])
            if role == "Place":
                prep = PLACE_PHRASES[place_kind][0] + " "
                out.append(prep)
                pos += len(prep)
            args.append((role, pos, pos + len(text), text, i))
        out.append(text)
        pos += len(text)
    out.append(template[last:])
    caption = "".join(out)
    caption = caption[:1].upper() + caption[1:]
    # the first phrase may have been capitalised: take every span's text from the caption itself
    args = [(role, s, e, caption[s:e], i) for role, s, e, _, i in args]
    return caption, (caption[trigger[1]:trigger[2]], trigger[1], trigger[2]), args


def is_plural(text: str) -> bool:
    """Whether an argument phrase is plural (for choosing the number of a replacement phrase)."""
    words = text.lower().split()
    return bool(words) and words[0] not in ("a", "an") and words[-1] in PLURAL_WORDS


def _generic(entity_type: str, plural: bool) -> str:
    if entity_type in PERSON_NOUNS:
        sing, plur = PERSON_NOUNS[entity_type]
        return plur[0] if plural else article(sing[0])
    if entity_type in ("vehicle", "building"):
        return entity_type + "s" if plural else article(entity_type)
    sing, plur = next(iter(OBJECT_NOUNS[entity_type].values()))
    noun = plur[0] if plural and plur else sing[0]
    return noun if noun in _MASS or plural else article(noun)


def _place_alternatives(text: str) -> list[str]:
    """Other place kinds for a place phrase, keeping its city: 'a market in Kabul' -> 'the port of Kabul'."""
    style = building_style(text)
    if style is not None:  # a Transport end: the other building styles ('a depot in Kyiv' -> 'a clinic in Kyiv')
        city = text.split(" in ", 1)[1]
        return [building_place(s, city, 0) for s in BUILDING_PLACES if s != style]
    for kind, (_, pattern) in PLACE_PHRASES.items():
        m = re.fullmatch(re.escape(pattern).replace(re.escape("{city}"), "(.+)"), text, flags=re.IGNORECASE)
        if m:
            return [p.format(city=m.group(1)) for k, (_, p) in PLACE_PHRASES.items() if k != kind]
    return []


def visible_alternatives(argument: Argument, event_type: str | None = None,
                         ontology: Ontology | None = None) -> list[str]:
    """Phrases of OTHER visible entity types that could fill the argument's role (for `arg_replace`).

    Each replacement changes something a viewer can check in the picture: "police officers" -> "soldiers",
    "a rifle" -> "a vehicle"; a Place phrase gets the other place kinds ("a market in Kabul" -> "the port of
    Kabul"), a Transport origin or destination the other building styles ("a depot in Kyiv" -> "a clinic in
    Kyiv"). The ontology's `entity_types` of the role decide what may fill it (non-visual ACE types such as
    PER or GPE are skipped). Without `event_type`, the role's entity types over all event types are used.
    """
    ontology = ontology or Ontology.default()
    types = [ontology[event_type]] if event_type is not None else list(ontology.types.values())
    allowed: list[str] = []
    for t in types:
        if argument.role in t.roles:
            allowed += [e for e in t.roles[argument.role].entity_types if e not in allowed]
    if event_type is not None and argument.role not in types[0].roles:
        raise ValueError(f"argument role {argument.role!r} is not a role of {event_type}: {list(types[0].roles)}")
    if argument.entity_type == "place":
        return _place_alternatives(argument.text) if "place" in allowed else []
    plural = is_plural(argument.text)
    return [_generic(t, plural) for t in allowed
            if t in VISIBLE_TYPES and t != "place" and t != argument.entity_type]
