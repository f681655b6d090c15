"""What the reasoner may say: the facts of one recommendation, and a check of each sentence against them.

A small LLM asked why a track suits a video writes fluent sentences that invent things: that a game
track "is a tribute to the music of the 1980s", that the video "transports viewers to a futuristic
cityscape". A reply must not pass those off as the bot's knowledge. So the reason is written from
`ReasonFacts` only (title, artist, the top tags, tempo and loudness, the video's image labels, the
user's words and what was understood from them, licence and duration), and every generated
sentence goes through `check_sentence` before it is shown:

- a word or phrase of the claim lexicon (genres, instruments, eras, moods, places: `LEXICON`) must
  appear among the facts' words (`FactIndex`; plurals and "-y"/"-al" endings folded);
- a number must be one of the facts' numbers (tempo, duration, a number in the title);
- a capitalised word inside a sentence is taken as a name (an artist, a place, a work) and must
  be one of the facts' words.

A sentence with any unsupported claim is dropped whole (never edited: a half-sentence reads as
something else); a sentence that repeats an earlier one, or has fewer than `MIN_WORDS` words, is
dropped too; so is one that names none of the facts at all ("unanchored": "It's a song about a
bridge that connects two buildings" for a track titled "Brick"); so is one that makes the video's
subject the music's ("misattributed": '"Fruit" is a song about a sea lion' when the sea lion is in
the video, not in the track's title, tags or the user's words); and so is the unfinished tail when
generation stops mid-sentence. `SentenceGate` applies
this to a stream of text pieces and hands on accepted sentences one by one (a sentence can only
be shown once it is complete and checked).

The same lexicon gives `banned_phrases`: the claim words the facts do NOT contain, which the
reasoner's decoder is told never to produce (`bad_words_ids`), so that fewer sentences are lost.
The benchmark (benchmarks/bench_reasons.py) judges what is shown with a different checker (the
models' own tag and image-label vocabularies, another word folding): this module never grades itself.

A claim word the user only asked against ("a sad piano piece" after "less sad", "with vocals"
after "no vocals") is "contradicted" unless another fact (a tag, the title) says it or the sentence
negates it too ("no vocals, as you asked").

Known limits: a claim in words outside the lexicon ("a cosy evening") passes; so does a negation
further than `NEGATION_REACH` words from its word.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

MIN_WORDS = 4  # a shorter "sentence" is a fragment ("Enjoy!"), not a reason
SLOW_BPM, FAST_BPM = 90.0, 130.0  # tempo words: below slow, above fast (engine/steering.py uses the same split)
QUIET_DB, LOUD_DB = -24.0, -14.0  # loudness words by RMS dBFS (engine/rhythm.py)

# --- the claim lexicon: what a sentence may only say when the facts say it ------------------------

LEXICON_TEXT = {  # comma-separated; multi-word terms are matched as phrases
    "genre": """rock, pop, jazz, blues, classical, electronic, electronica, electro, techno, house, trance,
        dubstep, drum and bass, hip hop, hip-hop, rap, metal, heavy metal, punk, funk, soul, r&b, rnb, reggae,
        country, folk, indie, alternative, ambient, orchestral, symphonic, symphony, chiptune, 8-bit, 16-bit,
        disco, dance, edm, synthwave, synth-pop, synthpop, new age, world music, latin, salsa, tango, waltz,
        march, opera, operatic, baroque, gospel, lo-fi, lofi, grunge, ska, celtic, bluegrass, swing,
        bossa nova, trap, breakbeat, industrial, hard rock, progressive, experimental, soundtrack, cinematic,
        game music, video game, arcade, anthem, lullaby, ballad""",
    "instrument": """guitar, electric guitar, acoustic guitar, bass, bassline, piano, keyboard, synth,
        synthesizer, drum, drumbeat, drum machine, percussion, percussive, violin, viola, cello, strings,
        string section, harp, flute, clarinet, oboe, bassoon, saxophone, sax, trumpet, horn, brass, trombone,
        tuba, organ, harpsichord, accordion, banjo, mandolin, ukulele, sitar, choir, choral, chorus, vocals,
        vocal, voice, singer, singing, vocalist, lyrics, bells, chimes, xylophone, marimba, glockenspiel,
        harmonica, bagpipes, tabla, timpani, orchestra, ensemble, band, bassist, drummer, guitarist, pianist, acoustic, solo""",
    "era": """retro, vintage, old-school, oldies, medieval, renaissance, victorian, futuristic, ancient,
        classic, golden age, century, decade, era, eighties, seventies, sixties, nineties, fifties, twenties,
        nostalgic, nostalgia""",
    "mood": """happy, sad, melancholic, melancholy, joyful, cheerful, upbeat, energetic, calm, calming,
        peaceful, relaxing, relaxed, chill, chilled, chillout, mellow, dark, gloomy, epic, dramatic, romantic,
        tense, suspenseful, scary, eerie, creepy, mysterious, triumphant, heroic, playful, whimsical, dreamy,
        uplifting, aggressive, angry, serene, tranquil, soothing, hopeful, emotional, intense, powerful, fun,
        funny, quirky, spooky, ominous, majestic, somber, sombre, bright, lively, festive, sentimental, soft,
        loud, quiet, fast, slow, sexy, catchy, beautiful, haunting, heartfelt, exciting, thrilling,
        adventurous, adventure, mystical, magical, ethereal, atmospheric, groovy, funky, jazzy, bouncy, heavy,
        smooth, gentle, warm, hard, driving, beat, groove, rhythmic, light, lighthearted, airy""",
    "place": """city, cityscape, urban, street, downtown, beach, seaside, sea, ocean, forest, jungle, woods,
        mountain, alps, desert, space, outer space, galaxy, planet, island, countryside, village, castle,
        arctic, cave, underwater, sky, river, lake, park, nightclub, club, stadium, cafe, tropical, japan,
        japanese, tokyo, paris, french, africa, african, asia, asian, oriental, america, american, europe,
        european, india, indian, china, chinese, spain, spanish, irish, scottish, arabic, middle east,
        hawaiian, brazil, brazilian, mexico, mexican, russia, russian, german, germany, italy, italian,
        english, britain, british, egypt, egyptian""",
}
LEXICON: dict[str, str] = {  # term -> category (genre, instrument, era, mood, place)
    t.strip(): cat for cat, text in LEXICON_TEXT.items() for t in text.split(",") if t.strip()
}
PHRASES = tuple(t for t in LEXICON if " " in t)  # matched before single words

STOPWORDS = frozenset(
    "the and for with from that this than then into onto over under about more less much very some something "
    "please not no any its it's music track song piece video".split()
)  # not facts to anchor a sentence in (a user's "something", the words every reason says)
NAME_WORDS = frozenset({"i", "bpm", "db", "cc", "by", "sa", "nc", "nd", "the", "a", "an", "it", "its", "this", "that"})  # capitalised but not names
DECADE = re.compile(r"\b(?:1[0-9]|20)?[0-9]0'?s\b|\b'[0-9]0s\b", re.IGNORECASE)
NUMBER = re.compile(r"\b\d+(?:[.,:]\d+)?\b")
WORD = re.compile(r"[A-Za-z][A-Za-z'&-]*[A-Za-z]|[A-Za-z]")
NEGATIONS = frozenset({"no", "not", "less", "without", "never", "fewer", "non", "nothing", "don't", "isn't", "avoid"})
NEGATION_REACH = 3  # words after a negation that it applies to ("no loud drums", "less of the sad")
ABOUT = re.compile(r"\b(?:about|tribute to|inspired by|dedicated to|(?:tells|telling) the story of|story of)\b", re.IGNORECASE)
VIDEO_SUBJECTS = frozenset({"video", "clip", "footage", "scene", "film", "shot", "show", "picture", "image"})  # folded
USER_REFERENCE = re.compile(r"\byou(?:'ve| have)? (?:asked|wanted|want|requested|said|mentioned|wished)\b|\byour (?:request|words|wish)\b", re.IGNORECASE)
SENTENCE_END = re.compile(r'(?<=[.!?])["\u201d\')]?(?=\s|$)')


def fold(word: str) -> str:
    """A crude stem: lower case, no possessive, plural and a few adjective endings folded (drums -> drum)."""
    w = word.lower().strip("'\"")
    if w.endswith("'s"):
        w = w[:-2]
    for suffix, repl in (("ies", "y"), ("es", ""), ("s", "")):
        if len(w) > 4 and w.endswith(suffix) and not w.endswith("ss"):
            w = w[: -len(suffix)] + repl
            break
    return w


def words(text: str) -> list[str]:
    return WORD.findall(text)


# =================================================================================================
# the facts
# =================================================================================================


def tempo_word(bpm: float | None) -> str:
    if not bpm:
        return ""
    return "slow" if bpm < SLOW_BPM else "fast" if bpm > FAST_BPM else "moderate"


def loudness_word(db: float | None) -> str:
    if db is None:
        return ""
    return "quiet" if db < QUIET_DB else "loud" if db > LOUD_DB else "medium"


@dataclass(frozen=True)
class ReasonFacts:
    """Everything the bot knows about one recommendation that a reason may use."""

    title: str
    artist: str = ""
    tags: tuple[str, ...] = ()  # the track's top tags, most likely first
    tempo_bpm: float | None = None
    loudness_db: float | None = None  # RMS dBFS
    video_labels: tuple[str, ...] = ()  # what the video shows (ImageNet names, best first)
    words: str = ""  # the user's words this turn (or a text-only start's)
    understood: str = ""  # what the feedback parser understood ("more drums, less sad")
    licence: str = ""
    duration_s: float | None = None

    def lines(self) -> list[str]:
        """The facts as short "name: value" lines, for a prompt."""
        out = [f"Title: {self.title.strip() or 'untitled'}"]
        if self.artist.strip():
            out.append(f"Artist: {self.artist.strip()}")
        if self.tags:
            out.append(f"Tags: {', '.join(self.tags)}")
        if self.tempo_bpm:
            out.append(f"Tempo: {self.tempo_bpm:.0f} BPM ({tempo_word(self.tempo_bpm)})")
        if self.loudness_db is not None:
            out.append(f"Loudness: {loudness_word(self.loudness_db)}")
        if self.video_labels:
            out.append(f"Video shows: {', '.join(self.video_labels)}")
        if self.words.strip():
            out.append(f"User asked: {self.words.strip()}")
        if self.understood.strip() and self.understood.strip() != self.words.strip():
            out.append(f"Understood: {self.understood.strip()}")
        if self.duration_s:
            m, s = divmod(int(round(self.duration_s)), 60)
            out.append(f"Length: {m}:{s:02d}")
        if self.licence.strip():
            out.append(f"Licence: {self.licence.strip()}")
        return out

    def text(self) -> str:
        return "\n".join(self.lines())


@dataclass(frozen=True)
class FactIndex:
    """The facts' folded words, phrases and numbers: what a sentence's claims are looked up in."""

    words: frozenset[str]
    phrases: str  # " w1 w2 ... " folded, for multi-word look-ups
    numbers: frozenset[str]
    user_spoke: bool = False  # the user's words are among the facts
    anchors: frozenset[str] = frozenset()  # the facts' own content words (not the field names): what a sentence must touch
    video_only: frozenset[str] = frozenset()  # words of the video's labels that nothing about the track or the user says
    negated: frozenset[str] = frozenset()  # folded claim words the user only asked against ("less sad", "no vocals")

    @classmethod
    def of(cls, facts: ReasonFacts) -> FactIndex:
        text = facts.text()
        folded = [fold(w) for w in words(text.replace("-", " "))] + [fold(w) for w in words(text)]
        numbers = set(NUMBER.findall(text))
        if facts.tempo_bpm:
            numbers |= {f"{facts.tempo_bpm:.0f}", str(int(facts.tempo_bpm))}
        if facts.duration_s:
            numbers |= {str(int(round(facts.duration_s))), str(int(round(facts.duration_s / 60)))}
        for d in DECADE.findall(text):
            numbers.add(d.lower())
        phrases = " " + " ".join(fold(w) for w in words(text)) + " "
        values = " ".join((
            facts.title, facts.artist, " ".join(facts.tags), " ".join(facts.video_labels), facts.words, facts.understood,
            tempo_word(facts.tempo_bpm), loudness_word(facts.loudness_db),
        ))  # fmt: skip
        anchors = _content_words(values)
        anchors |= {"bpm", "tempo", "beat", "pace"} if facts.tempo_bpm else set()  # "at 128 BPM", "a steady pace"
        track = " ".join((facts.title, facts.artist, " ".join(facts.tags), facts.words, facts.understood))
        video = _content_words(" ".join(facts.video_labels))
        own = " ".join((
            facts.title, facts.artist, " ".join(facts.tags), " ".join(facts.video_labels), tempo_word(facts.tempo_bpm),
            loudness_word(facts.loudness_db),
        ))  # fmt: skip
        user = f"{facts.words}. {facts.understood}".replace("-", " ")
        negated = {fold(w) for w in _negated_words(user)} - _folded_words(own)
        return cls(
            frozenset(folded), phrases, frozenset(numbers), user_spoke=bool(facts.words.strip() or facts.understood.strip()),
            anchors=frozenset(anchors | numbers), video_only=frozenset(video - _folded_words(track)),
            negated=frozenset(negated),
        )  # fmt: skip

    def contradicted(self, sentence: str) -> list[str]:
        """Claim words the sentence affirms that the user asked against and no other fact says
        ("a sad piano piece" after "less sad"); a word the sentence itself negates ("no vocals") is fine."""
        if not self.negated:
            return []
        return [w for w in _affirmed_words(sentence) if fold(w) in self.negated and _lexicon_term(fold(w))]

    def anchored(self, sentence: str) -> bool:
        """Whether the sentence names at least one of the facts (a word of them, or one of their numbers)."""
        found = _folded_words(sentence) | set(NUMBER.findall(sentence))
        return bool(found & self.anchors)

    def misattributed(self, sentence: str) -> list[str]:
        """The video's words a sentence makes the music's subject ("a song about a sea lion"); [] if none.

        Only what follows "about", "tribute to", "inspired by", ... counts, and only when the words
        before it are not about the video ("The video is about a sea lion" says what it shows)."""
        if not self.video_only or (m := ABOUT.search(sentence)) is None:
            return []
        if {fold(w) for w in words(sentence[: m.start()])} & VIDEO_SUBJECTS:
            return []
        tail = [w for w in words(sentence[m.end() :].replace("-", " ")) if fold(w) in self.video_only]
        return list(dict.fromkeys(tail))

    def has(self, term: str) -> bool:
        parts = [fold(w) for w in term.replace("-", " ").split()]
        if len(parts) == 1:
            return parts[0] in self.words or fold(term) in self.words
        return f" {' '.join(parts)} " in self.phrases


# =================================================================================================
# the check
# =================================================================================================


def _folded_words(text: str) -> set[str]:
    """The folded words of a text, hyphenated words split ("lo-fi" -> lo, fi)."""
    return {fold(w) for w in words(text.replace("-", " "))}


def _content_words(text: str) -> set[str]:
    """`_folded_words` less the stopwords and the words of two letters or fewer."""
    return {fold(w) for w in words(text.replace("-", " ")) if fold(w) not in STOPWORDS and len(w) > 2}


def _negated_words(text: str) -> list[str]:
    """The words within `NEGATION_REACH` after a negation ("less sad", "no loud drums"), clause by clause."""
    out: list[str] = []
    for clause in re.split(r"[,;.!?]| but | and then ", text.lower()):
        reach = 0
        for w in re.findall(r"[a-z][a-z']*", clause):
            if w in NEGATIONS:
                reach = NEGATION_REACH
            elif reach:
                out.append(w)
                reach -= 1
    return out


def _affirmed_words(sentence: str) -> list[str]:
    """The sentence's words that no negation before them (within `NEGATION_REACH`, same clause) takes back."""
    negated = set(_negated_words(sentence.replace("-", " ")))
    return [w for w in words(sentence.replace("-", " ").lower()) if w not in negated]


def _folded_phrase(text: str) -> str:
    return " " + " ".join(fold(w) for w in words(text.replace("-", " "))) + " "


_FOLDED_LEXICON = {fold(t): t for t in LEXICON if " " not in t}  # folded single word -> term
_FOLDED_PHRASES = tuple((_folded_phrase(p), p) for p in PHRASES)


def _lexicon_term(w: str) -> str | None:
    """The lexicon term a folded word is, comparatives included (calmer -> calm, happier -> happy)."""
    if w in _FOLDED_LEXICON:
        return _FOLDED_LEXICON[w]
    for suffix, repl in (("ier", "y"), ("iest", "y"), ("er", ""), ("est", ""), ("ler", "le"), ("ger", "g"), ("ter", "t"), ("ming", ""), ("ing", "")):
        if len(w) > len(suffix) + 2 and w.endswith(suffix) and (stem := w[: -len(suffix)] + repl) in _FOLDED_LEXICON:
            return _FOLDED_LEXICON[stem]
    return None


def _lexicon_hits(sentence: str) -> list[str]:
    """The lexicon terms a sentence names (phrases first; their words are not counted again)."""
    low = _folded_phrase(sentence)
    hits: list[str] = []
    for folded, p in _FOLDED_PHRASES:
        if folded in low:
            hits.append(p)
            low = low.replace(folded, " ")
    hits += [t for w in low.split() if (t := _lexicon_term(w))]
    for raw in (w.lower() for w in words(sentence) if "-" in w):  # hip-hop, lo-fi as written
        if raw in LEXICON and raw.replace("-", " ") not in hits:
            hits.append(raw)
    return list(dict.fromkeys(hits))


def _names(sentence: str) -> list[str]:
    """Capitalised words after the sentence's first word, outside quotes: taken as names."""
    unquoted = re.sub(r'"[^"]*"|\u201c[^\u201d]*\u201d', " ", sentence)
    tokens = words(unquoted)
    first = words(sentence)[:1]
    out = []
    for i, w in enumerate(tokens):
        if i == 0 and first and w == first[0]:
            continue
        if w[0].isupper() and w.lower() not in NAME_WORDS:
            out.append(w)
    return out


def unsupported_claims(sentence: str, index: FactIndex, foreign: Sequence[str] = ()) -> list[str]:
    """What a sentence claims that the facts do not say (empty: every claim is grounded).

    `foreign`: more terms to treat as claims, e.g. the words of a prompt's few-shot examples (a small
    model copies them: "carry the sandbar across the alp" where only the example had an alp).
    """
    low = _folded_phrase(sentence)
    bad = [t for t in _lexicon_hits(sentence) if not index.has(t)]
    bad += [t for t in foreign if _folded_phrase(t) in low and not index.has(t)]
    for d in DECADE.findall(sentence):
        if d.lower() not in index.numbers:
            bad.append(d)
    for n in NUMBER.findall(DECADE.sub(" ", sentence)):
        if n not in index.numbers and n.split(".")[0] not in index.numbers:
            bad.append(n)
    for a, b in re.findall(r'"([^"]*)"|\u201c([^\u201d]*)\u201d', sentence):
        quoted = (a or b).strip()
        if quoted and not all(index.has(w) for w in words(quoted)):
            bad.append(f'"{quoted}"')  # a quoted title that is not this track's
    bad += [n for n in _names(sentence) if not index.has(n)]
    if not index.user_spoke and (m := USER_REFERENCE.search(sentence)):
        bad.append(m.group(0))  # "you asked for ..." when the user asked nothing
    return list(dict.fromkeys(bad))


def banned_phrases(facts: ReasonFacts, extra: Sequence[str] = ()) -> list[str]:
    """The lexicon's terms (and `extra` terms) the facts do not contain: for the decoder's bad-words list."""
    index = FactIndex.of(facts)
    return [t for t in (*LEXICON, *extra) if not index.has(t)]


def split_sentences(text: str) -> tuple[list[str], str]:
    """(complete sentences, the unfinished rest)."""
    out, start = [], 0
    for m in SENTENCE_END.finditer(text):
        s = text[start : m.end()].strip()
        if s:
            out.append(s)
        start = m.end()
    return out, text[start:]


@dataclass
class Verdict:
    sentence: str
    unsupported: list[str]
    why: str = ""  # "unsupported", "unanchored", "contradicted", "misattributed", "repeat", "fragment", "unfinished"; "" when accepted

    @property
    def accepted(self) -> bool:
        return not self.why


@dataclass
class SentenceGate:
    """Sentences out of a stream of text pieces, each checked before it is let through (module docstring)."""

    facts: ReasonFacts
    foreign: Sequence[str] = ()  # more claim terms (unsupported_claims)
    index: FactIndex = field(init=False)
    verdicts: list[Verdict] = field(default_factory=list)
    _buffer: str = ""
    _seen: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.index = FactIndex.of(self.facts)

    def feed(self, piece: str) -> list[str]:
        """Add a piece; the sentences it completed that pass the check."""
        self._buffer += piece
        done, self._buffer = split_sentences(self._buffer)
        return [s for s in done if self._judge(s)]

    def finish(self) -> None:
        """The end of the text: an unfinished sentence is dropped (a reason ends on a full sentence)."""
        rest = self._buffer.strip()
        self._buffer = ""
        if rest:
            self.verdicts.append(Verdict(rest, [], "unfinished"))

    def _judge(self, sentence: str) -> bool:
        key = " ".join(fold(w) for w in words(sentence))
        if len(words(sentence)) < MIN_WORDS:
            self.verdicts.append(Verdict(sentence, [], "fragment"))
            return False
        if key in self._seen:
            self.verdicts.append(Verdict(sentence, [], "repeat"))
            return False
        self._seen.add(key)
        bad = unsupported_claims(sentence, self.index, self.foreign)
        if not bad and not self.index.anchored(sentence):
            self.verdicts.append(Verdict(sentence, [], "unanchored"))  # about none of the facts: invented
            return False
        if not bad and (against := self.index.contradicted(sentence)):
            self.verdicts.append(Verdict(sentence, against, "contradicted"))  # what the user asked against, said of the track
            return False
        if not bad and (video := self.index.misattributed(sentence)):
            self.verdicts.append(Verdict(sentence, video, "misattributed"))  # the video's subject given as the music's
            return False
        self.verdicts.append(Verdict(sentence, bad, "unsupported" if bad else ""))
        return not bad

    @property
    def accepted(self) -> list[str]:
        return [v.sentence for v in self.verdicts if v.accepted]

    @property
    def dropped(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.accepted]


def grounded_text(text: str, facts: ReasonFacts, foreign: Sequence[str] = ()) -> tuple[str, list[Verdict]]:
    """A whole text through the gate: (accepted sentences joined, every verdict)."""
    gate = SentenceGate(facts, foreign)
    gate.feed(text)
    gate.finish()
    return " ".join(gate.accepted), gate.verdicts


__all__ = [
    "LEXICON",
    "FactIndex",
    "ReasonFacts",
    "SentenceGate",
    "Verdict",
    "banned_phrases",
    "fold",
    "grounded_text",
    "loudness_word",
    "split_sentences",
    "tempo_word",
    "unsupported_claims",
]
