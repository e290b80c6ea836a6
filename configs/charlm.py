"""Character-level language model, LayerNorm LSTM or plain LSTM: `configs/charlm.py:lnlstm|lstm`.

  python train.py --config=configs/charlm.py:lnlstm --workdir=workdirs/charlm_lnlstm

On the embedded `pydoc_topics` text (CPython's documentation topics, offline);
`--config.dataset=tiny_shakespeare` when TFDS has it. Byte vocabulary, 128
characters per sequence, Adam with gradient clipping. The paper's comparison is
the two args at the same settings: the LayerNorm LSTM reaches lower validation
bits per character in the same number of steps (`scripts/paper_claims.py lnlstm`:
after 600 steps, 1.71 against 2.29 bits per character; 3 to 5 steps/s on 2 CPU
cores).
"""

import ml_collections

from configs import default

ARGS = ("lnlstm", "lstm")


def get_config(arg: str = "lnlstm") -> ml_collections.ConfigDict:
  if arg not in ARGS:
    raise ValueError(f"configs/charlm.py:{arg}: expected one of {ARGS}.")
  config = default.get_config()

  # What this experiment varies: LayerNorm in the LSTM or not.
  config.model = "char_lm"
  config.model_kwargs = ml_collections.ConfigDict({
      "layer_norm": arg == "lnlstm",
      "embed_dim": 64,
      "features": 256,
      "num_layers": 1,
  })

  config.dataset = "pydoc_topics"
  config.seq_len = 128
  config.batch_size = 32
  config.eval_batch_size = 64
  config.optimizer = "adamw"
  config.learning_rate = 2e-3
  config.weight_decay = 0.0
  config.grad_clip_norm = 1.0
  config.schedule = "constant"
  config.warmup_epochs = 0.0
  config.warmup_steps = 0
  config.num_train_steps = 1_500
  config.log_every_steps = 50
  config.eval_every_steps = 250
  config.checkpoint_every_steps = 500
  return config
