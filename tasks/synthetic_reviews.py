"""A documented grammar of short movie reviews: the corpus the demo model is pretrained on.

Nothing is downloaded: every text is generated here, so the corpus exists on any machine
and is free to use. A review is 1-3 opinion clauses of one polarity mixed with 0-2
neutral clauses, e.g.

    we saw it on friday . the acting was truly gripping and the ending felt clever .

Grammar (one polarity per review):
    review   := shuffle(opinion{1..3} + neutral{0..2}), each clause ended by ' .',
                two opinions may be joined by ' and '
    opinion  := the SUBJECT VERB [not] [INTENSIFIER] ADJECTIVE   (not: negated reviews)
    neutral  := one of NEUTRAL
A negated review (`negated_reviews`, the second demo task) says some opinions the other way
round: `the plot was not dull .` in a positive review. The pretraining corpus has no `not`.
Pretraining documents append, half the time, a verdict sentence
`overall , the review is positive .` (or `negative`), so the corpus itself links the
opinions to the words a classifier answers with.
"""

import numpy as np

SUBJECTS = ['film', 'movie', 'plot', 'story', 'acting', 'cast', 'script', 'ending', 'music',
            'dialogue', 'director', 'pacing', 'visuals', 'characters', 'humor', 'lead actor']
VERBS = ['was', 'is', 'felt', 'seemed', 'looked', 'came across as', 'turned out']
INTENSIFIERS = ['very', 'quite', 'really', 'truly', 'rather', 'so', 'extremely']
POSITIVE = ['great', 'wonderful', 'brilliant', 'superb', 'charming', 'moving', 'delightful',
            'gripping', 'clever', 'beautiful', 'fresh', 'funny', 'warm', 'stunning', 'solid',
            'lovely', 'thrilling', 'excellent', 'touching', 'smart', 'vivid', 'engaging']
NEGATIVE = ['awful', 'boring', 'dull', 'terrible', 'weak', 'clumsy', 'bland', 'tedious',
            'messy', 'flat', 'lazy', 'poor', 'silly', 'painful', 'forgettable', 'shallow',
            'stiff', 'confusing', 'cheap', 'hollow', 'predictable', 'sloppy']
NEUTRAL = ['we saw it on friday', 'it runs two hours', 'the theater was full',
           'i went with my sister', 'it opened last week', 'the tickets were cheap',
           'my friend picked it', 'it is based on a novel', 'we had popcorn',
           'it was shown in the evening', 'the seats were red', 'it is the second part']
LABELS = ('negative', 'positive')
NEGATION_RATE = 0.25  # Of each opinion in `negated_reviews`.


def _opinion(rng: np.random.RandomState, positive: bool, negated: bool = False) -> str:
  """`the SUBJECT VERB [not] [INTENSIFIER] ADJECTIVE`, the adjective of `positive` polarity."""
  words = ['the', rng.choice(SUBJECTS), rng.choice(VERBS)] + ['not'] * negated
  if rng.rand() < 0.5:
    words.append(rng.choice(INTENSIFIERS))
  words.append(rng.choice(POSITIVE if positive else NEGATIVE))
  return ' '.join(words)


def review(rng: np.random.RandomState, positive: bool) -> str:
  """One review of the given polarity."""
  return _clauses(rng, [_opinion(rng, positive) for _ in range(rng.randint(1, 4))])


def _clauses(rng: np.random.RandomState, opinions: list[str]) -> str:
  """The opinions, maybe two joined by 'and', shuffled with 0-2 neutral clauses."""
  if len(opinions) > 1 and rng.rand() < 0.5:
    opinions = [f'{opinions[0]} and {opinions[1]}', *opinions[2:]]
  neutral = list(rng.choice(NEUTRAL, rng.randint(0, 3), replace=False))
  clauses = opinions + neutral
  rng.shuffle(clauses)
  return ' '.join(f'{clause} .' for clause in clauses)


def labelled_reviews(seed: int, count: int) -> list[tuple[str, str]]:
  """(review, label word) pairs, balanced in expectation."""
  rng = np.random.RandomState(seed)
  pairs = []
  for _ in range(count):
    positive = bool(rng.rand() < 0.5)
    pairs.append((review(rng, positive), LABELS[positive]))
  return pairs


def negated_reviews(seed: int, count: int) -> list[tuple[str, str]]:
  """(review, label word) pairs in which each opinion is negated with probability
  `NEGATION_RATE` ("the plot was not dull" in a positive review)."""
  rng = np.random.RandomState(seed)
  pairs = []
  for _ in range(count):
    positive = bool(rng.rand() < 0.5)
    opinions = []
    for _ in range(rng.randint(1, 4)):
      negated = bool(rng.rand() < NEGATION_RATE)
      opinions.append(_opinion(rng, positive != negated, negated))
    pairs.append((_clauses(rng, opinions), LABELS[positive]))
  return pairs


def documents(seed: int, count: int) -> list[str]:
  """Pretraining text: reviews, half of them followed by their verdict sentence."""
  rng = np.random.RandomState(seed)
  texts = []
  for text, label in labelled_reviews(seed, count):
    if rng.rand() < 0.5:
      text = f'{text} overall , the review is {label} .'
    texts.append(text)
  return texts
