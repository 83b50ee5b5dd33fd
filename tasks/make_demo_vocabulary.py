"""Trains the demo model's SentencePiece vocabulary on the generated review corpus.

    python -m tasks.make_demo_vocabulary   # writes prompt_tuning/assets/demo/spm.model

T5 conventions: pad 0, EOS 1, unknown 2, no BOS; seqio adds 100 sentinel ids on top.
"""

import io

import sentencepiece

from prompt_tuning import demo_model
from tasks import synthetic_reviews


def main():
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(synthetic_reviews.documents(seed=3, count=20_000)),
      model_writer=model, vocab_size=256, model_type='word', pad_id=0, eos_id=1,
      unk_id=2, bos_id=-1, hard_vocab_limit=False, character_coverage=1.0)
  with open(demo_model.VOCABULARY_PATH, 'wb') as f:
    f.write(model.getvalue())
  print(f'wrote {demo_model.VOCABULARY_PATH}')


if __name__ == '__main__':
  main()
