"""Files the tests read from outside the repository."""

import os

# The real 32k T5 SentencePiece vocabulary, shipped beside the repository in shared/.
VOCAB_PATH = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 't5_vocab',
                          'sentencepiece.model')
