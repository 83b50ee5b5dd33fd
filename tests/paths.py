"""Files the tests read, all inside the repository."""

import os

# The real 32k T5 SentencePiece vocabulary (Apache-2.0; see tests/data/t5_vocab/NOTICE).
VOCAB_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 't5_vocab',
                          'sentencepiece.model')
