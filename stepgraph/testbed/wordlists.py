"""Word lists of task v2 (``wordproblems``): first names with pronouns, and nouns by kind.

Nouns carry their plural (irregular ones spelled out) and a kind that decides which verb
phrases fit them ("bakes" muffins, "picks" apples, "breaks" plates, "pop" balloons).
"""

from __future__ import annotations


def _names(text: str) -> list[str]:
    return text.split()


_SHE = _names("""Anna Amy Alice Ava Bella Beth Cara Chloe Clara Daisy Diana Ella Emma Eve Fiona Grace Hannah
Ivy Jade Jane Julia Kate Laura Lily Lucy Maya Mia Nina Nora Olivia Paula Rosa Ruby Sara Sophie
Tina Uma Vera Wendy Zoe Abby Alma Aria Becky Carla Cindy Dora Edith Elena Erin Faye Gina Greta
Hazel Helen Irene Isla Jenny Joan Judy Karen Kira Leah Lena Luna Mara Megan Molly Nadia Nell
Opal Penny Piper Rachel Rita Rose Sally Sandra Tara Tess Una Violet Willa Yara Zara Agnes Alba
Bianca Celia Delia Elise Flora Gemma Hilda Ines Jess Kelly Lara Mabel Naomi Polly Quinn Rhea
Sienna Thea Ursula Vicky Wanda Xena Yvonne Zelda Amber Beatrice Camila Eliza Freya Gloria
Harriet Iris Josie Kayla Lola Marta Noelle Olga Priya Renee Stella Tanya Valerie""")
_HE = _names("""Tom Ben Dan Finn Jim Sam Max Leo Jack Adam Alan Bob Carl Chris Dave Eric Frank Gary Hugo
Ian Jake Joe Kevin Liam Luke Mark Matt Mike Nick Noah Owen Paul Pete Ray Rick Ryan Sean Tim Tony
Victor Will Zack Aaron Abe Arthur Ben Brad Brian Bruno Caleb Colin Cody Derek Dylan Eli Ethan
Felix Fred George Glen Grant Harry Henry Isaac Ivan Jason Jesse Joel Jonah Kyle Lars Leon Louis
Marco Miles Nate Neil Omar Oscar Otto Pablo Rafael Reed Roger Ross Rudy Seth Simon Stan Steve
Theo Toby Troy Vince Wade Walter Wes Yusuf Zane Andre Boris Cyrus Dmitri Emil Farid Gus Hank
Igor Jonas Karl Kofi Lucas Manny Milo Nico Oliver Percy Quentin Raj Sergio Tariq Umar Vito""")
_THEY = _names("""Alex Sky Robin Jordan Taylor Morgan Casey Riley Jamie Avery Quinn Rowan Sage River Kai Remy
Jules Ari Emery Finley Hayden Kendall Logan Marlowe Parker Reese Shay Tatum Dakota Ellis""")

NAMES: tuple[tuple[str, str], ...] = tuple(
    dict.fromkeys([(n, "she") for n in _SHE] + [(n, "he") for n in _HE] + [(n, "they") for n in _THEY if n not in _SHE])
)
"""(first name, subject pronoun), each name once."""

# kind -> "singular/plural" (plural omitted when it is the singular + "s"; "_" joins two words).
_NOUNS = {
    "item": """pen pencil marker crayon eraser sticker card stamp coin marble book notebook comic
magnet button badge ribbon toy puzzle kite ball block shell rock feather key coupon ticket
postcard bead bracelet necklace ring sock shirt hat scarf glove/gloves brush candle battery/batteries
bottle/bottles can box/boxes bag rope spoon fork knife/knives tool screw nail bolt brick tile seed
flag poster photo map leaf/leaves pebble paperclip rubber_band""",
    "food": """apple orange banana pear peach plum lemon mango cherry/cherries strawberry/strawberries
grape carrot potato/potatoes tomato/tomatoes cookie cupcake muffin pie biscuit candy/candies
chocolate donut pretzel sandwich/sandwiches egg pancake waffle bun bagel cracker lollipop
taco sausage dumpling pizza_slice""",
    "baked": "cookie cupcake muffin pie biscuit bun bagel loaf/loaves cake brownie scone pretzel croissant",
    "picked": "apple orange pear peach plum lemon cherry/cherries strawberry/strawberries flower rose tulip daisy/daisies berry/berries mushroom",
    "fragile": "plate cup glass/glasses bowl vase mug jar egg ornament lightbulb",
    "balloon": "balloon bubble",
    "animal": "chicken cow sheep/sheep goat duck fish/fish rabbit horse puppy/puppies kitten bird frog",
}


def _expand(spec: str) -> list[tuple[str, str]]:
    words: list[tuple[str, str]] = []
    for token in spec.split():
        singular, _, plural = token.replace("_", " ").partition("/")  # "_" joins two words
        words.append((singular, plural or singular + "s"))
    return words


NOUNS: dict[str, tuple[tuple[str, str], ...]] = {kind: tuple(_expand(spec)) for kind, spec in _NOUNS.items()}
"""kind -> (singular, plural) nouns."""

CONTAINERS: tuple[tuple[str, str], ...] = (
    ("box", "boxes"), ("bag", "bags"), ("basket", "baskets"), ("crate", "crates"), ("pack", "packs"),
    ("jar", "jars"), ("tray", "trays"), ("carton", "cartons"), ("bucket", "buckets"), ("case", "cases"),
    ("bundle", "bundles"), ("shelf", "shelves"), ("row", "rows"), ("bowl", "bowls"),
)
"""(singular, plural) containers: "a box holds 12 eggs", "4 boxes of 12"."""

RATES: tuple[tuple[str, str, str], ...] = (
    ("reads", "page", "pages"), ("walks", "mile", "miles"), ("runs", "lap", "laps"), ("writes", "page", "pages"),
    ("swims", "lap", "laps"), ("drinks", "glass of water", "glasses of water"), ("folds", "paper crane", "paper cranes"),
    ("knits", "row", "rows"), ("practices for", "minute", "minutes"), ("plants", "tree", "trees"),
    ("paints", "picture", "pictures"), ("solves", "puzzle", "puzzles"), ("saves", "dollar", "dollars"),
    ("earns", "dollar", "dollars"), ("bakes", "cookie", "cookies"), ("sews", "button", "buttons"),
)
"""(verb, unit, units) for "reads 6 pages per day for 7 days"."""

PERIODS: tuple[tuple[str, str], ...] = (("day", "days"), ("week", "weeks"), ("hour", "hours"), ("month", "months"))

GROUPS: tuple[str, ...] = ("friends", "classmates", "cousins", "neighbors", "teammates", "children", "students", "guests")
"""Who shares are split among."""

RELATIVES: tuple[str, ...] = ("sister", "brother", "cousin", "friend", "neighbor", "aunt", "uncle", "teacher")
