import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)  # CI has 2 cores; vLLM-style servers started by fixtures need the other
