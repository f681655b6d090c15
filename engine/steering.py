"""Feedback steering: free-form feedback becomes a preference over the tag vocabulary.

Zero-shot recommender, third part (DESIGN.md, "Before any fusion checkpoint exists"). The paper's
second turn carries the user's feedback on a candidate track (section 3: conversations written
from musicnn MTT/MSD tags; section 4.1: the fusion model reads prompt + candidate music). Without
a trained model we read the feedback ourselves:

1. Parse: split into clauses (",", ";", "and", "but", ...), and inside a clause find direction
   words ("more", "less", "no", "without", "not", "too", "add", "remove", "fewer", ...), which
   compose ("not too loud" = a little less loud, "don't want vocals" = no vocals), intensity
   words ("much", "a bit"), and content: tag names, synonyms and concept words from a small
   lexicon ("calm" = more quiet/soft/slow, less loud/fast; "upbeat"; "dark"), with comparatives
   ("calmer" = more calm, "happier" = more happy), particles ("tone it down", "pump it up") and
   axis nouns ("a calm tempo" is calm, not faster). Any words: a clause whose content words no
   lexicon entry covers ("sounds like a rainy afternoon", "beach party energy") is embedded as one
   phrase by the text encoder (MiniLM in the lite profile) and compared with short descriptions of
   every tag and concept word, pace, energy and mood included (`DESCRIPTIONS`, embedded once per
   parser and cached); the best few concepts within `SIM_MARGIN` of the best and above `SIM_MIN`,
   none pulling against a better one, stand for it, weighted by a softmax at `SIM_TEMPERATURE`,
   and the reply shows the mapping ("rainy afternoon -> chill, ambient"). Words below `SIM_MIN`
   are reported as not understood; asks for a tag no candidate carries are reported by
   `unavailable` ("more opera": nothing in the catalog has it).
2. A `Preference` holds signed weights over the tags (V,) and over a second channel, rhythm:
   (tempo, loudness, onset rate), for "faster", "slower", "louder", "quieter", "calmer".
3. `steer` scores candidates by how they move from the previous track along the preference:

       z_v   = (P_n[v] - P_prev[v]) / s_v          tag change in units of the tag's spread s_v
       zr_k  = rhythm change on axis k / RHYTHM_SCALE[k]   (tempo, onset rate in octaves; dB)
       move  = mean over the channels the words touch of
               tags:   sum_v w_v tanh(z_v)  / sum_v |w_v|
               rhythm: sum_k r_k tanh(zr_k) / sum_k |r_k|
       drift = mean over tags the user did not mention (w_v == 0) of |tanh(z_v)|
       score = move - drift_penalty * drift               in [-1 - drift_penalty, 1]

   `move` is positive exactly when the candidate moved the way the words asked (weighted by how
   strongly); tanh keeps one huge jump in one tag from outweighing the rest. The two channels
   count equally, so "calmer" (eleven tags, three rhythm axes) is judged as much on measured
   tempo and loudness as on the tagger's "quiet"/"soft". `drift` keeps the
   next pick otherwise close to the previous one ("more drums" should not also switch from piano
   to metal). s_v is the tag's standard deviation over the candidates, floored at
   `TAG_SCALE_FLOOR` so that a tag that barely varies does not turn noise into direction.
   `drift_penalty` is chosen by benchmarks/bench_steering_heldout.py on its tuning half.

`steer` needs only tag probabilities and rhythm, which every catalog track carries, so it serves
both answer modes: inside the zero-shot scorer (engine/zeroshot.py), and on top of a trained
MVT-Fusion ranking, where the caller adds `weight * standardised steer` to the fusion cosines
of the catalog's top-N (the fusion model already reads the words; steering makes the explicit
"less X" / "no X" hold, which sentence embeddings ignore).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from engine.encoders.base import TextEncoder

log = logging.getLogger(__name__)

# --- rhythm channel -------------------------------------------------------------------------
RHYTHM_AXES = ("tempo", "loudness", "onset_rate")  # columns of every rhythm array (N, 3)
TEMPO_SCALE_OCT = 0.25  # octaves of tempo change that count as one unit of movement
LOUDNESS_SCALE_DB = 3.0  # dB of loudness change that count as one unit
ONSET_SCALE_OCT = 0.5  # octaves (doublings) of onset rate that count as one unit
ONSET_FLOOR = 0.1  # onsets per second added before taking log2 (silence has none)

# --- tag channel ----------------------------------------------------------------------------
TAG_SCALE_FLOOR = 0.02  # probability: the smallest spread a tag is measured in
DEFAULT_DRIFT_PENALTY = 0.25  # chosen by benchmarks/bench_steering_heldout.py (see ZeroShotWeights)

# --- any words: sentence similarity for words the lexicon does not know (MiniLM cosines) -----
# The content words of a clause that no lexicon entry covers ("sounds like a rainy afternoon",
# "beach party energy") are embedded as one phrase and compared with short descriptions of every
# tag and of the concept words (pace, energy, mood: `DESCRIPTIONS`); the best few within
# `SIM_MARGIN` of the best and above `SIM_MIN` stand for the phrase, each meaning what its
# lexicon entry means (tags and rhythm), weighted by a softmax at `SIM_TEMPERATURE`.
# below this cosine nothing is close enough: the words are reported as not understood. Measured on
# the tuning half of benchmarks/steering_phrases.tsv: scene phrases match at 0.31-0.60 ("road trip"
# 0.31, "rainy afternoon" 0.40), office words at 0 ("a spreadsheet", "my tax return"); some
# unrelated single words still pass ("banana" 0.30 -> mellow, "purple" 0.35 -> blues): the reply
# shows what they were taken for.
SIM_MIN = 0.30
SIM_MARGIN = 0.06  # only descriptions within this cosine of the best match count
SIM_TEMPERATURE = 0.03  # softmax temperature over the kept cosines
SIM_MAX_MATCHES = 3  # concepts a phrase may stand for ("rainy afternoon -> calm, soft, sad")
SIM_STRENGTH = 0.7  # similarity matches are less certain than lexicon matches
DESCRIPTION_TEMPLATE = "{} music"  # best separation of related/unrelated among 3 templates tried
PHRASE_CACHE_SIZE = 512  # embedded feedback phrases kept per parser
# --- direction and intensity words ----------------------------------------------------------
EXCLUDE_STRENGTH = 1.5  # "no X", "without X", "remove X": stronger than "less X"
# phrase -> (sign, strength multiplier). Multi-word phrases are matched before single words;
# signs multiply when several stand before the same content ("don't want" = -1 * +1).
DIRECTIONS: dict[str, tuple[int, float]] = {
    "more": (1, 1.0), "add": (1, 1.0), "added": (1, 1.0), "stronger": (1, 1.0), "extra": (1, 1.0),
    "increase": (1, 1.0), "boost": (1, 1.0), "bring in": (1, 1.0), "turn up": (1, 1.0),
    "with": (1, 1.0), "want": (1, 1.0), "like": (1, 1.0), "love": (1, 1.0), "need": (1, 1.0),
    "prefer": (1, 1.0), "keep": (1, 0.5), "higher": (1, 1.0), "bigger": (1, 1.0), "high": (1, 1.0),
    "low": (-1, 1.0), "half": (-1, 1.0),
    "less": (-1, 1.0), "fewer": (-1, 1.0), "lower": (-1, 1.0), "reduce": (-1, 1.0),
    "weaker": (-1, 1.0), "tone down": (-1, 1.0), "turn down": (-1, 1.0), "decrease": (-1, 1.0),
    "too": (-1, 1.0), "not": (-1, 1.0), "don't": (-1, 1.0), "dont": (-1, 1.0),
    "do not": (-1, 1.0), "never": (-1, 1.0), "hate": (-1, 1.0), "dislike": (-1, 1.0),
    "no": (-1, EXCLUDE_STRENGTH), "without": (-1, EXCLUDE_STRENGTH), "remove": (-1, EXCLUDE_STRENGTH),
    "drop": (-1, EXCLUDE_STRENGTH), "lose": (-1, EXCLUDE_STRENGTH), "skip": (-1, EXCLUDE_STRENGTH),
    "avoid": (-1, EXCLUDE_STRENGTH), "get rid of": (-1, EXCLUDE_STRENGTH), "none": (-1, EXCLUDE_STRENGTH),
    "nothing": (-1, EXCLUDE_STRENGTH), "nothing too": (-1, 0.6),
    "cut": (-1, EXCLUDE_STRENGTH), "kill": (-1, EXCLUDE_STRENGTH), "minus": (-1, EXCLUDE_STRENGTH),
    "no more": (-1, 1.0), "not too": (-1, 0.6), "not so": (-1, 0.7), "not that": (-1, 0.7),
    "not as": (-1, 0.7), "a bit less": (-1, 0.5), "a little less": (-1, 0.5),
}
INTENSITY: dict[str, float] = {
    "much": 1.5, "way": 1.5, "far": 1.5, "a lot": 1.5, "lots": 1.5, "lot": 1.5, "very": 1.5,
    "really": 1.5, "super": 1.5, "even": 1.25, "heaps": 1.5, "loads": 1.5, "tons": 1.5,
    "a bit": 0.5, "bit": 0.5, "a little": 0.5, "little": 0.5, "slightly": 0.5, "somewhat": 0.5,
    "kinda": 0.5, "kind of": 0.5, "a tad": 0.5, "tad": 0.5, "bit more": 0.5,
}
# words that carry no musical content of their own
FILLERS = frozenset(
    """a an the please pls plz i i'm im i'd id me my we us you it its it's that this these those
    of to is are be been being was were some something anything one ones music song songs track
    tracks tune tunes sound sounds sounding vibe vibes feel feeling style kind sort type similar
    give play make try maybe perhaps just rather instead stuff thing things quite pretty in on
    for at by video clip background go get let's lets have has using use can could would should
    will okay ok yeah yes hmm now next another other else also so than as or then there here
    which what ish bit thanks thank lol little same way really any needs need nice good great
    cool fine up down out off into over gotta wanna fan better best worse back tone dial pump crank
    amp bring take turn kick wake let""".split()
)
# clause boundaries: punctuation and conjunctions. "and"/"or" joined clauses with no direction
# word of their own inherit the previous clause's ("no drums and vocals"), "but" clauses do not.
CLAUSE_SPLIT = re.compile(r"\s*(?:[,;.!?:]+|\bbut\b|\bthough\b|\balthough\b|\bhowever\b|\bwhile\b|\bwhereas\b|\byet\b|\bplus\b|\bthen\b|\band\b|\bor\b|&)\s*")
INHERITING = frozenset({"and", "or", "&", "plus"})
# "tone it down", "bring the energy down", "pump it up": the particle gives the direction. Content
# that raises energy or pace ("energy", "tempo", "volume") is turned down by "down"/"back"; content
# that already means less ("calm it down", "slow it down") keeps its sign; with no content at all
# the particle means more or less energy.
PARTICLES: dict[str, int] = {"up": 1, "down": -1, "back": -1}
# nouns that name an axis rather than a direction: alone they mean "more" of it ("higher tempo",
# "low energy"); beside a word that says which way ("a calm tempo", "beach party energy") they add nothing
AXIS_NOUNS = frozenset({"pace", "paced", "tempo", "speed", "bpm", "volume", "energy"})
PROTECTED = {"low key": "lowkey", "8 bit": "8bit", "16 bit": "8bit", "drum and bass": "drum_and_bass", "rock and roll": "rock_and_roll", "r&b": "rnb", "r and b": "rnb", "rhythm and blues": "rnb"}
HEAVY_WITH = re.compile(r"\b(drums?|bass|guitars?|piano|synths?|strings|percussion|vocals?|beats?|choir|orchestra)\s+heavy\b")
TOKEN = re.compile(r"[a-z0-9_']+")

# --- the lexicon: surface words -> concept ----------------------------------------------------


@dataclass(frozen=True)
class Concept:
    """What a word means for the tags (display name -> signed weight) and for rhythm (3,)."""

    tags: Mapping[str, float]
    rhythm: tuple[float, float, float] = (0.0, 0.0, 0.0)  # (tempo, loudness, onset rate)


VOCAL_TAGS = {"vocal": 1.0, "vocals": 1.0, "voice": 1.0, "singing": 1.0, "male vocal": 0.5,
              "female vocal": 0.5, "male voice": 0.5, "female voice": 0.5, "female vocalists": 0.5,
              "male vocalists": 0.5, "female vocalist": 0.5, "opera": 0.3, "choir": 0.3}
NO_VOCAL_TAGS = {"no vocals": 1.0, "no vocal": 1.0, "no voice": 1.0, "instrumental": 1.0}
FEMALE_TAGS = {"female": 1.0, "woman": 1.0, "female vocal": 1.0, "female voice": 1.0, "female vocalists": 1.0, "female vocalist": 1.0}
MALE_TAGS = {"male": 1.0, "man": 1.0, "male vocal": 1.0, "male voice": 1.0, "male vocalists": 1.0}
CALM = Concept({"quiet": 1.0, "soft": 1.0, "slow": 0.5, "ambient": 0.5, "chillout": 0.5, "mellow": 0.5,
                "loud": -1.0, "fast": -0.5, "metal": -0.5, "hard rock": -0.5, "heavy metal": -0.5},
               (-1.0, -1.0, -1.0))
ENERGETIC = Concept({"fast": 0.7, "loud": 0.7, "beat": 0.3, "dance": 0.3, "drums": 0.3,
                     "quiet": -0.7, "soft": -0.7, "slow": -0.7, "ambient": -0.3}, (1.0, 1.0, 1.0))


def _neg(tags: Mapping[str, float]) -> dict[str, float]:
    return {k: -v for k, v in tags.items()}


_CONCEPT_TABLE: list[tuple[str, Concept]] = [
    # instruments and voices
    ("drums drum percussion percussive drumming drummer drumbeat drumbeats", Concept({"drums": 1.0, "beat": 0.5, "beats": 0.5})),
    ("beat beats groove grooves groovy", Concept({"beat": 1.0, "beats": 1.0, "drums": 0.5})),
    ("vocals vocal voice voices singing singer singers sung lyrics sing", Concept({**VOCAL_TAGS, **_neg(NO_VOCAL_TAGS)})),
    ("instrumental instrumentals", Concept({**NO_VOCAL_TAGS, **_neg(VOCAL_TAGS)})),
    ("female woman women girl girls", Concept({**FEMALE_TAGS, **{k: -0.5 for k in MALE_TAGS}})),
    ("female+vocals female+vocal female+voice female+singer female+vocalist female+vocalists woman+singing",
     Concept({**FEMALE_TAGS, **{k: -0.5 for k in MALE_TAGS}, **{k: -0.5 for k in NO_VOCAL_TAGS}})),
    ("male man men guy guys", Concept({**MALE_TAGS, **{k: -0.5 for k in FEMALE_TAGS}})),
    ("male+vocals male+vocal male+voice male+singer male+vocalist male+vocalists man+singing",
     Concept({**MALE_TAGS, **{k: -0.5 for k in FEMALE_TAGS}, **{k: -0.5 for k in NO_VOCAL_TAGS}})),
    ("choir choirs choral chorus chant chants", Concept({"choir": 1.0, "choral": 1.0, "opera": 0.3})),
    ("opera operatic", Concept({"opera": 1.0, "classical": 0.3})),
    ("guitar guitars guitarist", Concept({"guitar": 1.0})),
    ("acoustic unplugged", Concept({"acoustic": 1.0, "guitar": 0.3, "electronic": -0.3})),
    ("piano pianos keys", Concept({"piano": 1.0})),
    ("violin violins fiddle", Concept({"violin": 1.0, "strings": 0.5})),
    ("strings string orchestra orchestral orchestras symphonic symphony", Concept({"strings": 1.0, "violin": 0.5, "cello": 0.5, "classical": 0.5})),
    ("cello cellos", Concept({"cello": 1.0, "strings": 0.5})),
    ("harp harps", Concept({"harp": 1.0})),
    ("flute flutes", Concept({"flute": 1.0})),
    ("sitar sitars", Concept({"sitar": 1.0, "indian": 0.5})),
    ("harpsichord harpsichords baroque", Concept({"harpsichord": 1.0, "classical": 0.3})),
    ("synth synths synthesizer synthesizers synthesiser synthy chiptune chiptunes 8bit", Concept({"synth": 1.0, "electronic": 0.5, "electro": 0.3})),
    ("solo", Concept({"solo": 1.0})),
    # genres and eras
    ("electronic electronica electro edm digital", Concept({"electronic": 1.0, "electronica": 1.0, "electro": 1.0, "techno": 0.3, "synth": 0.3})),
    ("techno", Concept({"techno": 1.0, "electronic": 0.5})),
    ("house", Concept({"house": 1.0, "dance": 0.5, "electronic": 0.3})),
    ("dance danceable dancing disco club", Concept({"dance": 1.0, "party": 0.5, "beat": 0.3})),
    ("party", Concept({"party": 1.0, "dance": 0.5})),
    ("rock", Concept({"rock": 1.0, "classic rock": 0.5, "hard rock": 0.5, "alternative rock": 0.5, "indie rock": 0.5})),
    ("rock_and_roll", Concept({"rock": 1.0, "oldies": 0.5, "classic rock": 0.5})),
    ("metal", Concept({"metal": 1.0, "heavy metal": 1.0, "hard rock": 0.5})),
    ("punk", Concept({"punk": 1.0, "rock": 0.3})),
    ("pop poppy", Concept({"pop": 1.0, "indie pop": 0.5, "catchy": 0.3})),
    ("indie", Concept({"indie": 1.0, "indie rock": 0.5, "indie pop": 0.5})),
    ("alternative alt", Concept({"alternative": 1.0, "alternative rock": 0.5})),
    ("jazz jazzy", Concept({"jazz": 1.0})),
    ("blues bluesy", Concept({"blues": 1.0})),
    ("soul soulful", Concept({"soul": 1.0, "rnb": 0.3})),
    ("rnb", Concept({"rnb": 1.0, "soul": 0.3})),
    ("funk funky", Concept({"funk": 1.0})),
    ("hip+hop hiphop rap rapping rapper", Concept({"hip-hop": 1.0})),
    ("country", Concept({"country": 1.0})),
    ("folk folksy", Concept({"folk": 1.0, "acoustic": 0.3})),
    ("classical", Concept({"classical": 1.0, "classic": 1.0, "strings": 0.3})),
    ("ambient atmospheric", Concept({"ambient": 1.0, "new age": 0.3, "chillout": 0.3})),
    ("new+age", Concept({"new age": 1.0, "ambient": 0.5})),
    ("experimental avant+garde", Concept({"experimental": 1.0, "weird": 0.5})),
    ("weird strange odd quirky", Concept({"weird": 1.0, "experimental": 0.5})),
    ("indian", Concept({"indian": 1.0, "sitar": 0.5})),
    ("oldies retro vintage", Concept({"oldies": 1.0, "60s": 0.3, "70s": 0.3})),
    ("60s sixties", Concept({"60s": 1.0})),
    ("70s seventies", Concept({"70s": 1.0})),
    ("80s eighties", Concept({"80s": 1.0})),
    ("90s nineties", Concept({"90s": 1.0})),
    ("00s 2000s noughties", Concept({"00s": 1.0})),
    ("drum_and_bass dnb", Concept({"electronic": 1.0, "drums": 0.5, "fast": 0.5}, (1.0, 0.0, 1.0))),
    ("easy+listening easy", Concept({"easy listening": 1.0, "mellow": 0.3})),
    # mood
    ("sad sadness melancholic melancholy gloomy depressing somber sombre sorrowful mournful tragic",
     Concept({"sad": 1.0, "happy": -1.0, "mellow": 0.3})),
    ("dark darkness grim ominous sinister moody spooky creepy eerie haunting scary tense tension suspense suspenseful anxious nervous", Concept({"sad": 0.7, "happy": -0.7, "weird": 0.3})),
    ("happy happiness cheerful joyful joyous fun playful uplifting sunny positive bright jolly", Concept({"happy": 1.0, "sad": -1.0, "catchy": 0.3})),
    ("beautiful lovely", Concept({"beautiful": 1.0})),
    ("epic cinematic dramatic heroic majestic grand triumphant", Concept({"strings": 0.5, "classical": 0.5, "choir": 0.3, "loud": 0.5, "quiet": -0.3}, (0.0, 0.5, 0.0))),
    ("catchy", Concept({"catchy": 1.0, "pop": 0.3})),
    ("sexy sensual", Concept({"sexy": 1.0})),
    ("mellow", Concept({"mellow": 1.0, "chill": 0.5, "soft": 0.5})),
    ("chill chilled chillout relaxed relaxing laid+back laidback lounge", Concept({"chill": 1.0, "chillout": 1.0, "mellow": 0.5, "easy listening": 0.5, "loud": -0.5}, (-0.5, -0.5, -0.5))),
    ("calm peaceful gentle tranquil serene soothing relaxation lowkey understated reflective contemplative thoughtful introspective", CALM),
    ("energetic energy intense powerful driving hype lively exciting excitement action punchy", ENERGETIC),
    ("upbeat up+tempo uptempo bouncy", Concept({"happy": 0.7, "fast": 0.7, "dance": 0.5, "catchy": 0.3, "sad": -0.5, "slow": -0.5}, (1.0, 0.5, 1.0))),
    ("heavy hard aggressive harsh angry anger furious rage", Concept({"metal": 1.0, "heavy metal": 1.0, "hard rock": 1.0, "loud": 0.5, "soft": -0.5, "quiet": -0.5}, (0.0, 1.0, 0.5))),
    ("light airy delicate", Concept({"soft": 1.0, "easy listening": 0.5, "metal": -0.5, "loud": -0.5}, (0.0, -0.5, 0.0))),
    # pace and energy (the rhythm channel)
    ("fast quick rapid speedy pacey frantic", Concept({"fast": 1.0, "slow": -1.0}, (1.0, 0.0, 1.0))),
    ("slow slowly sluggish crawl crawling", Concept({"slow": 1.0, "fast": -1.0}, (-1.0, 0.0, -1.0))),
    ("loud loudness noisy", Concept({"loud": 1.0, "quiet": -1.0, "soft": -0.5}, (0.0, 1.0, 0.3))),
    ("quiet quieter silent", Concept({"quiet": 1.0, "soft": 0.5, "loud": -1.0}, (0.0, -1.0, 0.0))),
    ("soft softly", Concept({"soft": 1.0, "quiet": 0.5, "loud": -1.0}, (0.0, -1.0, 0.0))),
    ("busy busier dense", Concept({"fast": 0.3}, (0.0, 0.0, 1.0))),
    ("sparse minimal minimalist", Concept({"quiet": 0.3}, (0.0, 0.0, -1.0))),
    ("pace paced tempo speed bpm", Concept({"fast": 1.0, "slow": -1.0}, (1.0, 0.0, 0.5))),
    ("volume", Concept({"loud": 1.0, "quiet": -1.0}, (0.0, 1.0, 0.0))),
]


def _build_lexicon() -> dict[str, Concept]:
    """Surface form -> concept. Forms are space-separated; '+' joins the words of a multi-word form."""
    lex: dict[str, Concept] = {}
    for forms, concept in _CONCEPT_TABLE:
        for form in forms.split():
            lex.setdefault(form.replace("+", " "), concept)
    return lex


LEXICON: dict[str, Concept] = _build_lexicon()

# comparative -> the word it is "more" of
COMPARATIVES: dict[str, str] = {
    "calmer": "calm", "gentler": "gentle", "faster": "fast", "quicker": "quick", "slower": "slow",
    "louder": "loud", "quieter": "quiet", "softer": "soft", "happier": "happy", "sadder": "sad",
    "darker": "dark", "brighter": "bright", "heavier": "heavy", "lighter": "light",
    "harder": "hard", "livelier": "lively", "chiller": "chill", "mellower": "mellow",
    "funkier": "funk", "jazzier": "jazz", "poppier": "pop", "rockier": "rock", "punchier": "punchy",
    "weirder": "weird", "stranger": "strange", "groovier": "groove", "busier": "busy",
    "sparser": "sparse", "noisier": "noisy", "catchier": "catchy", "moodier": "moody",
    "bouncier": "bouncy", "jollier": "jolly", "grimmer": "grim", "peppier": "upbeat",
    "snappier": "fast", "speedier": "speedy", "sexier": "sexy", "prettier": "pretty",
    "spookier": "dark", "creepier": "dark", "scarier": "dark", "edgier": "aggressive",
    "warmer": "mellow", "colder": "dark", "older": "old",
}


def _comparative_base(word: str) -> str | None:
    """Base word of a comparative ("calmer" -> "calm"), from the table or regular endings."""
    if word in COMPARATIVES:
        return COMPARATIVES[word]
    if len(word) < 5 or not word.endswith("er"):
        return None
    stem = word[:-2]
    candidates = [stem, stem + "e"]
    if word.endswith("ier"):
        candidates.insert(0, word[:-3] + "y")
    if len(stem) > 2 and stem[-1] == stem[-2]:
        candidates.append(stem[:-1])  # bigger -> big
    for c in candidates:
        if c in LEXICON:
            return c
    return None


# --- vocabulary ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tag:
    name: str  # as the tagger writes it, e.g. "mtt:drums", "msd:Hip-Hop"
    display: str  # lower-case words, e.g. "drums", "hip-hop"
    synonyms: tuple[str, ...] = ()  # extra descriptions for sentence similarity

    @property
    def descriptions(self) -> list[str]:
        """Sentences embedded for similarity: the display name and each synonym."""
        return [DESCRIPTION_TEMPLATE.format(d) for d in (self.display, *self.synonyms)]


# extra descriptions for similarity, by display name
SYNONYMS: dict[str, tuple[str, ...]] = {
    "drums": ("percussion",), "beat": ("rhythm",), "vocal": ("singer",), "vocals": ("singing voice",),
    "no vocals": ("instrumental",), "no vocal": ("instrumental",), "no voice": ("instrumental",),
    "synth": ("synthesizer",), "electronic": ("electronica", "edm"), "techno": ("rave",),
    "classical": ("orchestral",), "strings": ("orchestra",), "choir": ("choral voices",),
    "sad": ("melancholic",), "happy": ("cheerful", "joyful"), "quiet": ("calm",), "soft": ("gentle",),
    "loud": ("intense",), "fast": ("energetic", "upbeat"), "slow": ("relaxed tempo",),
    "ambient": ("atmospheric",), "chillout": ("relaxing",), "mellow": ("smooth",),
    "hip-hop": ("rap",), "rnb": ("rhythm and blues",), "metal": ("heavy",), "weird": ("strange",),
    "80s": ("eighties",), "90s": ("nineties",), "70s": ("seventies",), "60s": ("sixties",),
}


# Short descriptions of the concept words, for any-words steering (module docstring, step 1): what
# the word sounds like and where such music is heard. Keys are lexicon words (their Concept is what
# a match means); every tag also counts through "<tag> music" and its SYNONYMS.
DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "calm": ("calm peaceful relaxing music", "quiet background music for resting, studying or sleeping"),
    "energetic": ("energetic intense high-energy music", "powerful driving music for action, sport and workouts", "music for sports highlights, trailers and chases"),
    "upbeat": ("upbeat bouncy music with a lively tempo", "feel-good music that gets people moving"),
    "happy": ("happy cheerful joyful music", "bright sunny carefree feel-good music"),
    "sad": ("sad melancholic sorrowful music", "emotional music for grief, loss and loneliness"),
    "dark": ("dark ominous eerie music", "spooky suspenseful music for horror and mystery"),
    "epic": ("epic cinematic orchestral music", "heroic dramatic music for battles and adventure"),
    "beautiful": ("beautiful tender romantic music", "lovely moving music for love and weddings"),
    "mellow": ("mellow smooth warm music", "easygoing soft music for a quiet dinner or a slow evening", "warm cozy music by the fire"),
    "chill": ("chilled laid-back lounge music", "relaxed music for a lazy afternoon"),
    "heavy": ("heavy aggressive loud guitar music", "angry hard-hitting headbanging music"),
    "light": ("light airy delicate music",),
    "weird": ("weird strange experimental sounds", "quirky unusual music"),
    "party": ("party music for celebrating", "music for a festive celebration with friends"),
    "dance": ("danceable club music with a steady beat", "music for a night out on the dance floor"),
    "ambient": ("ambient atmospheric soundscape", "spacious drifting background texture"),
    "new age": ("new age music for meditation, yoga and spa",),
    "electronic": ("electronic music made with computers and synthesizers", "futuristic digital music, neon city nights"),
    "techno": ("techno rave music with a pounding beat",),
    "synth": ("synthesizer sounds", "retro video game chiptune bleeps"),
    "folk": ("folk music with traditional acoustic instruments", "rustic old-world tavern music"),
    "country": ("country music with banjo and twangy guitar",),
    "jazz": ("jazz with saxophone, trumpet and swing", "smooth late-night jazz"),
    "classical": ("classical music played by an orchestra",),
    "strings": ("string section, violins and cellos",),
    "piano": ("piano music", "a pianist playing keys"),
    "drums": ("drums and percussion", "a drummer playing a kit"),
    "guitar": ("guitar music", "a guitarist playing riffs or strumming chords"),
    "acoustic": ("acoustic unplugged music",),
    "rock": ("rock music with electric guitars and drums",),
    "metal": ("heavy metal with distorted guitars",),
    "punk": ("fast raw punk rock",),
    "funk": ("funky groove with slap bass",),
    "sexy": ("sexy sensual r&b music",),
    "catchy": ("catchy pop tune with hooks",),
    "fast": ("fast tempo, quick rapid pace", "music that rushes along at high speed"),
    "slow": ("slow tempo, unhurried leisurely pace", "music that moves slowly"),
    "loud": ("loud music at high volume",),
    "quiet": ("quiet music at low volume",),
    "soft": ("soft gentle music",),
    "busy": ("busy dense music with many notes",),
    "sparse": ("sparse minimal music with few notes",),
    "vocals": ("music with a singer and lyrics", "a singing voice"),
    "instrumental": ("instrumental music without vocals", "music with no singing"),
    "female vocals": ("female vocals, a woman singing",),
    "male vocals": ("male vocals, a man singing",),
    "choir": ("a choir singing, choral voices", "chanting voices in a church"),
    "opera": ("opera singer, operatic voice",),
    "flute": ("flute and woodwinds",),
    "violin": ("violin and fiddle",),
    "harp": ("harp",),
    "cello": ("cello",),
    "sitar": ("sitar, indian music",),
    "harpsichord": ("harpsichord, baroque music",),
}


class TagVocabulary:
    """The tags steering works over, in the fixed order of tag probability vectors (V,)."""

    def __init__(self, tags: Sequence[Tag]) -> None:
        self.tags = list(tags)
        self.names = [t.name for t in self.tags]
        self._index = {t.name.lower(): i for i, t in enumerate(self.tags)}
        self.by_display: dict[str, list[int]] = {}
        for i, t in enumerate(self.tags):
            self.by_display.setdefault(t.display, []).append(i)

    def __len__(self) -> int:
        return len(self.tags)

    @classmethod
    def from_names(cls, names: Iterable[str]) -> TagVocabulary:
        """Vocabulary from tagger names like "mtt:drums" (display = the part after ':', lower-case)."""
        tags = []
        for name in names:
            display = name.split(":", 1)[-1].strip().lower()
            tags.append(Tag(name=name, display=display, synonyms=SYNONYMS.get(display, ())))
        return cls(tags)

    @classmethod
    def musicnn(cls) -> TagVocabulary:
        """The 50 MTT + 50 MSD tags of musicnn (DESIGN.md "Catalog tags"), as "mtt:x" / "msd:x"."""
        from musicnn.configuration import (  # plain lists; no TensorFlow
            MSD_LABELS,
            MTT_LABELS,
        )

        return cls.from_names([f"mtt:{t}" for t in MTT_LABELS] + [f"msd:{t}" for t in MSD_LABELS])

    def index(self, name: str) -> int:
        """Position of a tag name (case-insensitive)."""
        return self._index[name.lower()]

    def indices(self, display: str) -> list[int]:
        """Every tag with this display name (e.g. "rock" is both mtt:rock and msd:rock)."""
        return self.by_display.get(display.lower(), [])

    def vector(self, tags: Mapping[str, float] | None) -> np.ndarray:
        """Tag probabilities by name -> a vector in vocabulary order; unknown names are ignored.  # (V,)"""
        v = np.zeros(len(self), dtype=np.float32)
        for name, p in (tags or {}).items():
            i = self._index.get(name.lower())
            if i is not None:
                v[i] = p
        return v

    def matrix(self, rows: Sequence[Mapping[str, float] | None]) -> np.ndarray:
        """Stack `vector` over tracks.  # (N, V)"""
        return np.stack([self.vector(r) for r in rows]) if rows else np.zeros((0, len(self)), np.float32)


# --- preference ----------------------------------------------------------------------------------


@dataclass
class PreferenceTerm:
    """One piece of feedback as understood: for explanations ("more drums", "less sad")."""

    phrase: str  # the words it came from, e.g. "drums" or "80s synth-pop"
    sign: int  # +1 more, -1 less
    strength: float  # > 0
    source: str  # "lexicon", "comparative" or "similarity"
    exclude: bool  # "no X", "without X", "remove X"
    tags: dict[str, float]  # tag name -> weight this term adds (signed)
    rhythm: tuple[float, float, float]  # (tempo, loudness, onset rate) it adds (signed)
    meaning: tuple[str, ...] = ()  # "similarity": the concepts the words stood for, best first

    def describe(self) -> str:
        if self.source == "similarity":  # "rainy afternoon -> calm, soft, sad"
            lead = "no " if self.exclude else "less " if self.sign < 0 else ""
            return f"{lead}{self.phrase} \u2192 {', '.join(self.meaning)}"
        if self.exclude:
            return f"no {self.phrase}"
        degree = "much " if self.strength > 1.0 else "a bit " if self.strength < 1.0 else ""
        if self.source == "comparative":
            return f"{degree}{self.phrase}" if self.sign > 0 else f"not {self.phrase}"
        return f"{degree}{'more' if self.sign > 0 else 'less'} {self.phrase}"


@dataclass
class Preference:
    """Which tags and rhythm axes the user wants more or less of, and how strongly."""

    weights: np.ndarray  # (V,) signed: > 0 more of this tag, < 0 less
    rhythm: np.ndarray  # (3,) signed over RHYTHM_AXES
    terms: list[PreferenceTerm] = field(default_factory=list)
    positive_text: str = ""  # content words of the positive clauses, for the semantic query
    unmatched: list[str] = field(default_factory=list)  # words nothing understood

    @property
    def empty(self) -> bool:
        return not (np.any(self.weights) or np.any(self.rhythm))

    def weight(self, vocab: TagVocabulary, display: str) -> float:
        """Summed weight of all tags with this display name."""
        return float(sum(self.weights[i] for i in vocab.indices(display)))

    def describe(self) -> str:
        return ", ".join(t.describe() for t in self.terms)


@dataclass
class _Segment:
    sign: int = 1
    strength: float = 1.0
    has_direction: bool = False
    exclude: bool = False  # an exclusion word ("no", "without", "remove") stands before it
    content: list[str] = field(default_factory=list)


class FeedbackParser:
    """Turns feedback text into a `Preference` over a `TagVocabulary` (module docstring, step 1)."""

    def __init__(self, vocabulary: TagVocabulary, text_encoder: TextEncoder | None = None) -> None:
        self.vocab = vocabulary
        self.text_encoder = text_encoder
        # tag display names the lexicon does not cover still match by name
        self.lexicon: dict[str, Concept] = dict(LEXICON)
        for display in vocabulary.by_display:
            self.lexicon.setdefault(display.replace("-", " "), Concept({display: 1.0}))
        self._max_ngram = max(len(k.split()) for k in self.lexicon)
        self._desc_vecs: np.ndarray | None = None  # (M, D) description sentence vectors
        self._desc_keys: list[str] = []  # lexicon key of each distinct concept
        self._desc_owner: np.ndarray | None = None  # (M,) index into _desc_keys of each description
        self._phrases: OrderedDict[str, np.ndarray] = OrderedDict()  # embedded feedback phrases (LRU)
        self._lock = threading.Lock()  # the engine's worker threads share one parser

    # -- similarity ------------------------------------------------------------------------------
    def description_texts(self) -> tuple[list[str], list[str]]:
        """(descriptions, lexicon key each stands for): every tag's and every DESCRIPTIONS entry's."""
        texts, keys = [], []
        for t in self.vocab.tags:
            key = t.display.replace("-", " ")
            for d in t.descriptions:
                texts.append(d)
                keys.append(key)
        for key, descs in DESCRIPTIONS.items():
            if key in self.lexicon:
                texts.extend(descs)
                keys.extend([key] * len(descs))
        return texts, keys

    def precompute(self) -> None:
        """Embed the descriptions now (once per parser; the engine calls it at load time)."""
        with self._lock:
            if self._desc_vecs is not None or self.text_encoder is None:
                return
            texts, keys = self.description_texts()
            uniq = list(dict.fromkeys(keys))
            pos = {k: i for i, k in enumerate(uniq)}
            self._desc_vecs = _to_numpy(self.text_encoder.encode_sentences(texts))
            self._desc_keys = uniq
            self._desc_owner = np.asarray([pos[k] for k in keys])
            log.info("embedded %d descriptions of %d concepts for any-words steering", len(texts), len(uniq))

    def _embed_phrase(self, phrase: str) -> np.ndarray:
        assert self.text_encoder is not None
        with self._lock:
            if phrase in self._phrases:
                self._phrases.move_to_end(phrase)
                return self._phrases[phrase]
        vec = _to_numpy(self.text_encoder.encode_sentences([phrase]))[0]
        with self._lock:
            self._phrases[phrase] = vec
            if len(self._phrases) > PHRASE_CACHE_SIZE:
                self._phrases.popitem(last=False)
        return vec

    def similar_concepts(self, phrase: str) -> list[tuple[str, float, float]]:
        """Concepts a phrase stands for: [(lexicon key, weight in (0, 1], cosine)], best first."""
        if self.text_encoder is None:
            return []
        self.precompute()
        assert self._desc_vecs is not None and self._desc_owner is not None
        # the phrase itself, not templated: "banana music" would share "music" with every tag
        q = self._embed_phrase(phrase)
        sims = np.full(len(self._desc_keys), -1.0)
        np.maximum.at(sims, self._desc_owner, self._desc_vecs @ q)  # best description per concept
        best = float(sims.max())
        close = np.flatnonzero((sims >= SIM_MIN) & (sims >= best - SIM_MARGIN))
        keep: list[int] = []
        for i in close[np.argsort(-sims[close], kind="stable")]:
            # sentence vectors barely tell antonyms apart ("fast tempo" ~ "slow tempo"): a concept
            # that pulls against a better match is dropped, not averaged into it
            if not any(_conflict(self.lexicon[self._desc_keys[i]], self.lexicon[self._desc_keys[j]]) for j in keep):
                keep.append(int(i))
            if len(keep) == SIM_MAX_MATCHES:
                break
        w = np.exp((sims[keep] - best) / SIM_TEMPERATURE)
        return [(self._desc_keys[i], float(x), float(sims[i])) for i, x in zip(keep, w)]

    def similar_tags(self, phrase: str) -> dict[int, float]:
        """Tags a phrase moves through similarity: tag index -> weight (signed by the concepts)."""
        out: dict[int, float] = {}
        for key, w, _ in self.similar_concepts(phrase):
            for display, tw in self.lexicon[key].tags.items():
                for j in self.vocab.indices(display):
                    out[j] = out.get(j, 0.0) + w * tw
        return out

    # -- parsing ---------------------------------------------------------------------------------
    def parse(self, text: str) -> Preference:
        """Feedback text -> Preference (module docstring)."""
        weights = np.zeros(len(self.vocab), dtype=np.float32)
        rhythm = np.zeros(3, dtype=np.float32)
        terms: list[PreferenceTerm] = []
        positive: list[str] = []
        unmatched: list[str] = []
        for seg in self._segments(text):
            for term in self._resolve(seg, unmatched):
                for name, w in term.tags.items():
                    weights[self.vocab.index(name)] += w
                rhythm += np.asarray(term.rhythm, dtype=np.float32)
                terms.append(term)
            words = " ".join(t.replace("_", " ") for t in seg.content if t not in FILLERS)
            if seg.sign > 0 and words:
                positive.append(words)  # what the semantic query may embed: negations dropped
        pref = Preference(weights=weights, rhythm=rhythm, terms=terms, positive_text=", ".join(dict.fromkeys(positive)), unmatched=unmatched)
        log.debug("parsed feedback %r -> %s", text, pref.describe())
        return pref

    def _segments(self, text: str) -> list[_Segment]:
        """Clauses -> direction segments: direction words, then the content they apply to."""
        text = text.lower().replace("-", " ").replace("\u2019", "'")
        text = re.sub(r"(\d)'s\b", r"\1s", text)  # 80's -> 80s
        text = HEAVY_WITH.sub(r"lots of \1", text)  # "drum heavy": lots of drums, not heavy metal
        text = re.sub(r"\b(?!it|that|what|let|there|here)(\w+)'s\b", r"\1", text)  # a man's voice -> man voice
        for phrase, token in PROTECTED.items():  # multi-word names that contain "and" or "bit"
            text = re.sub(rf"\b{re.escape(phrase)}\b", token, text)
        pieces = CLAUSE_SPLIT.split(f" {text} ")
        joiners = [m.group(0).strip() for m in CLAUSE_SPLIT.finditer(f" {text} ")]
        segments: list[_Segment] = []
        prev: _Segment | None = None
        for k, clause in enumerate(pieces):
            tokens = TOKEN.findall(clause)
            if not tokens:
                continue
            clause_segs = self._clause_segments(tokens)
            joiner = joiners[k - 1] if k > 0 and k - 1 < len(joiners) else ""
            first = clause_segs[0] if clause_segs else None
            if (first is not None and prev is not None and not first.has_direction and joiner in INHERITING
                    and not any(_comparative_base(t) for t in first.content)):
                first.sign, first.strength, first.exclude = prev.sign, prev.strength, prev.exclude  # "no drums and vocals"
            segments.extend(clause_segs)
            if clause_segs:
                prev = clause_segs[-1]
        return segments

    def _clause_segments(self, tokens: list[str]) -> list[_Segment]:
        segs: list[_Segment] = []
        cur = _Segment()
        i = 0
        while i < len(tokens):
            hit = _longest(tokens, i, DIRECTIONS, 3)
            if hit is not None:
                phrase, n = hit
                if cur.content:
                    segs.append(cur)
                    cur = _Segment()
                sign, strength = DIRECTIONS[phrase]
                # directions before the same content compose: "don't want" = -1 * +1
                cur.sign = cur.sign * sign if cur.has_direction else sign
                cur.strength *= strength
                cur.has_direction = True
                cur.exclude = cur.sign < 0 and (cur.exclude or (sign < 0 and strength == EXCLUDE_STRENGTH))
                i += n
                continue
            hit = _longest(tokens, i, INTENSITY, 2)
            if hit is not None:
                phrase, n = hit
                cur.strength *= INTENSITY[phrase]
                i += n
                continue
            cur.content.append(tokens[i])
            i += 1
        if cur.content:
            segs.append(cur)
        return segs

    def _resolve(self, seg: _Segment, unmatched: list[str]) -> list[PreferenceTerm]:
        """Content words of one segment -> terms (lexicon n-grams, comparatives, similarity)."""
        terms: list[PreferenceTerm] = []
        leftovers: list[str] = []
        toks = seg.content
        particle = 0 if seg.has_direction else next((PARTICLES[t] for t in reversed(toks) if t in PARTICLES), 0)
        turned = replace(seg, sign=-seg.sign, has_direction=True)  # "bring the energy down"

        def directed(concept: Concept) -> _Segment:
            return turned if particle < 0 and sum(concept.rhythm) > 0 else seg

        i = 0
        while i < len(toks):
            hit = _longest(toks, i, self.lexicon, self._max_ngram)
            if hit is not None:
                phrase, n = hit
                concept = self.lexicon[phrase]
                terms.append(self._term(phrase.replace("_", " "), directed(concept), concept, "lexicon"))
                i += n
                continue
            base = _comparative_base(toks[i])
            if base is not None and base in self.lexicon:
                terms.append(self._term(toks[i], directed(self.lexicon[base]), self.lexicon[base], "comparative"))
            elif toks[i] not in FILLERS:
                leftovers.append(toks[i])
            i += 1
        if len(terms) > 1 or (terms and leftovers):
            axis_free = [t for t in terms if t.phrase not in AXIS_NOUNS]
            if axis_free or leftovers:
                terms = axis_free
        if leftovers:
            # the clause's content words together ("beach party energy", not "beach" alone)
            phrase = " ".join(t.replace("_", " ") for t in toks if t not in FILLERS)
            understood = [self.lexicon[t.phrase] for t in terms if t.phrase in self.lexicon]
            matches = [m for m in self.similar_concepts(phrase) if not any(_conflict(self.lexicon[m[0]], c) for c in understood)]
            if matches:
                tags: dict[str, float] = {}
                rhythm = np.zeros(3)
                for key, w, _ in matches:
                    concept = self.lexicon[key]
                    for display, tw in concept.tags.items():
                        tags[display] = tags.get(display, 0.0) + SIM_STRENGTH * w * tw
                    rhythm += SIM_STRENGTH * w * np.asarray(concept.rhythm)
                concept = Concept(tags, (float(rhythm[0]), float(rhythm[1]), float(rhythm[2])))
                term = self._term(phrase, directed(concept), concept, "similarity")
                term.meaning = tuple(key for key, _, _ in matches)
                terms.append(term)
            elif not terms:
                unmatched.append(" ".join(leftovers))
        if not terms and not leftovers and particle:  # "tone it down", "pump it up": energy
            sign_seg = replace(seg, sign=particle, has_direction=True)
            terms.append(self._term("energy", sign_seg, ENERGETIC, "lexicon"))
        return terms

    def _term(self, phrase: str, seg: _Segment, concept: Concept, source: str) -> PreferenceTerm:
        scale = seg.sign * seg.strength
        tags: dict[str, float] = {}
        for display, w in concept.tags.items():
            for j in self.vocab.indices(display):
                tags[self.vocab.names[j]] = tags.get(self.vocab.names[j], 0.0) + scale * w
        rhythm = tuple(scale * r for r in concept.rhythm)
        return PreferenceTerm(phrase=phrase, sign=seg.sign, strength=seg.strength, source=source, exclude=seg.exclude, tags=tags, rhythm=rhythm)  # type: ignore[arg-type]


def _conflict(a: Concept, b: Concept) -> bool:
    """Whether two concepts pull in opposite directions (tag weights or rhythm against each other)."""
    tags = sum(w * b.tags.get(k, 0.0) for k, w in a.tags.items())
    rhythm = float(np.dot(a.rhythm, b.rhythm))
    return tags + rhythm < 0


def _longest(tokens: list[str], i: int, table: Mapping[str, object], max_n: int) -> tuple[str, int] | None:
    for n in range(min(max_n, len(tokens) - i), 0, -1):
        phrase = " ".join(tokens[i : i + n])
        if phrase in table:
            return phrase, n
    return None


def _to_numpy(x: object) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()  # type: ignore[union-attr]
    return np.asarray(x, dtype=np.float32)


# --- what the catalog cannot give -------------------------------------------------------------------

# An MTT tag no candidate carries above this probability is absent from the catalog ("more opera"
# on game music: mtt:opera peaks at 0.016 over the 65 held-out tracks). Only MTT tags are judged:
# MSD's sigmoid outputs are small everywhere (msd:happy peaks at 0.008 on the same tracks) and say
# more about ranking than about presence.
UNAVAILABLE_PROB = 0.05
MAIN_TAG_SHARE = 0.5  # a term's main tags: weight >= this share of its largest positive weight


def unavailable(pref: Preference, candidate_tags: np.ndarray, vocab: TagVocabulary) -> list[str]:
    """What the user asked more of that no candidate has: [term description] ("more opera").

    A term counts when it asks for more (sign > 0), moves no rhythm axis (every catalog has a
    faster track), and every one of its main MTT tags stays below UNAVAILABLE_PROB on every
    candidate. candidate_tags: (N, V) in vocabulary order.
    """
    out: list[str] = []
    tags = np.asarray(candidate_tags, dtype=np.float32)
    if tags.shape[0] == 0:
        return out
    for term in pref.terms:
        if term.sign <= 0 or any(term.rhythm):
            continue
        positive = {name: w for name, w in term.tags.items() if w > 0}
        if not positive:
            continue
        top = max(positive.values())
        main = [vocab.index(n) for n, w in positive.items() if w >= MAIN_TAG_SHARE * top]
        mtt = [i for i in main if vocab.names[i].lower().startswith("mtt:")]
        if mtt and len(mtt) == len(main) and float(tags[:, mtt].max()) < UNAVAILABLE_PROB:
            out.append(term.describe())
    return out


# --- steering -------------------------------------------------------------------------------------


def rhythm_matrix(rhythms: Sequence[object]) -> np.ndarray:
    """`engine.rhythm.Rhythm`s (or (tempo, loudness, onset) triples) -> array.  # (N, 3)"""
    rows = [(r.tempo_bpm, r.loudness_db, r.onset_rate) if hasattr(r, "tempo_bpm") else tuple(r) for r in rhythms]  # type: ignore[attr-defined]
    return np.asarray(rows, dtype=np.float32).reshape(-1, 3)


def rhythm_change(previous: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Rhythm change from the previous track in movement units (tempo/onset in octaves).  # (N, 3)"""
    prev = np.asarray(previous, dtype=np.float64).reshape(3)
    cand = np.asarray(candidates, dtype=np.float64).reshape(-1, 3)
    out = np.zeros_like(cand)
    valid_tempo = (cand[:, 0] > 0) & (prev[0] > 0)  # 0 BPM = no tempo found
    out[valid_tempo, 0] = np.log2(cand[valid_tempo, 0] / prev[0]) / TEMPO_SCALE_OCT
    out[:, 1] = (cand[:, 1] - prev[1]) / LOUDNESS_SCALE_DB
    out[:, 2] = np.log2((cand[:, 2] + ONSET_FLOOR) / (prev[2] + ONSET_FLOOR)) / ONSET_SCALE_OCT
    return out


def tag_scale(candidate_tags: np.ndarray) -> np.ndarray:
    """Per-tag spread over the candidates, floored at TAG_SCALE_FLOOR.  # (V,)"""
    if candidate_tags.shape[0] < 2:
        return np.full(candidate_tags.shape[1], TAG_SCALE_FLOOR, dtype=np.float32)
    return np.maximum(candidate_tags.std(axis=0), TAG_SCALE_FLOOR).astype(np.float32)


def steering_parts(
    pref: Preference,
    previous_tags: np.ndarray,
    candidate_tags: np.ndarray,
    *,
    previous_rhythm: np.ndarray | None = None,
    candidate_rhythm: np.ndarray | None = None,
    scale: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """`move` and `drift` of each candidate (module docstring). Both (N,)."""
    P = np.asarray(candidate_tags, dtype=np.float32)  # (N, V)
    p = np.asarray(previous_tags, dtype=np.float32).reshape(1, -1)  # (1, V)
    s = tag_scale(P) if scale is None else np.asarray(scale, dtype=np.float32)
    z = np.subtract(P, p)  # (N, V), then in place: one buffer for 10k x 100 candidates
    z *= 1.0 / s
    np.tanh(z, out=z)
    w = pref.weights.astype(np.float32)
    r = pref.rhythm.astype(np.float32)
    touched = np.flatnonzero(w)  # the few tags the words name: gather them, no (N, V) matvec
    z_touched = z[:, touched]  # (N, K)
    channels: list[np.ndarray] = []  # each channel's move in [-1, 1]
    if touched.size:
        channels.append((z_touched @ w[touched]) / float(np.abs(w).sum()))  # (N,)
    if previous_rhythm is not None and candidate_rhythm is not None and np.any(r):
        zr = np.tanh(rhythm_change(previous_rhythm, candidate_rhythm)).astype(np.float32)  # (N, 3)
        channels.append((zr @ r) / float(np.abs(r).sum()))  # (N,)
    move = np.mean(channels, axis=0) if channels else np.zeros(P.shape[0], dtype=np.float32)
    n_free = z.shape[1] - touched.size
    if n_free > 0:
        drift = (np.abs(z, out=z).sum(axis=1) - np.abs(z_touched).sum(axis=1)) / n_free  # (N,)
    else:
        drift = np.zeros(P.shape[0], dtype=np.float32)
    return {"move": move.astype(np.float32), "drift": drift.astype(np.float32)}


def steer(
    pref: Preference,
    previous_tags: np.ndarray,
    candidate_tags: np.ndarray,
    *,
    previous_rhythm: np.ndarray | None = None,
    candidate_rhythm: np.ndarray | None = None,
    drift_penalty: float = DEFAULT_DRIFT_PENALTY,
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """Score candidates by movement from the previous track along the preference.  # (N,)

    previous_tags (V,), candidate_tags (N, V): tag probabilities in vocabulary order;
    previous_rhythm (3,), candidate_rhythm (N, 3): (tempo BPM, loudness dBFS, onsets/s).
    score = move - drift_penalty * drift (module docstring); 0 for an empty preference.
    """
    if pref.empty:
        return np.zeros(np.asarray(candidate_tags).shape[0], dtype=np.float32)
    parts = steering_parts(pref, previous_tags, candidate_tags, previous_rhythm=previous_rhythm, candidate_rhythm=candidate_rhythm, scale=scale)
    return parts["move"] - np.float32(drift_penalty) * parts["drift"]


__all__ = [
    "Concept", "FeedbackParser", "Preference", "PreferenceTerm", "RHYTHM_AXES", "Tag", "TagVocabulary",
    "rhythm_change", "rhythm_matrix", "steer", "steering_parts", "tag_scale", "unavailable",
]
