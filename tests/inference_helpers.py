"""Cheap checkpoints for the eval / predict / autolabel tests: a tiny model's initial variables
saved through the training checkpoint code (hmsa_jax.checkpoint.save), with the meta a training
run writes. No training: the tests check plumbing and numerics, not accuracy."""
import os

import jax
import optax

from hmsa_jax import checkpoint
from hmsa_jax.configlib import config_to_dict
from hmsa_jax.train.config import default_config
from hmsa_jax.train.loop import build_model
from hmsa_jax.train.state import create_train_state

MODEL = "resnet_tiny_deeplabv3plus_mscale"
HEIGHT, WIDTH = 32, 64


def tiny_config(num_eval: int = 6, num_classes: int = 8):
    config = default_config()
    config.data.synthetic.update(num_train=8, num_eval=num_eval, height=HEIGHT, width=WIDTH,
                                 num_classes=num_classes)
    config.data.eval.batch_size = 8
    config.data.class_uniform.cache_dir = ""
    config.model.name = MODEL
    config.model.dtype = "float32"
    config.runtime.progress = False
    config.runtime.compile_cache = ""  # tests/conftest.py sets the cache
    return config


def save_init_checkpoint(workdir: str, config, class_names, seed: int = 0, step: int = 7,
                         sharpen: float = 1.0) -> str:
    """A training-layout checkpoint (state with optimiser, meta with config) of fresh variables;
    `sharpen` multiplies the classifier (DeepLab's final_6) so softmaxes are confident."""
    num_classes = len(class_names)
    model = build_model(config, num_classes)
    tx = optax.sgd(0.1, momentum=0.9)
    # jitted: eager op-by-op init of even a tiny model takes minutes on a loaded 2-core CPU
    state = jax.jit(lambda key: create_train_state(model, tx, key, (1, HEIGHT, WIDTH, 3)))(
        jax.random.key(seed))
    params = dict(state.params)
    params["final_6"] = jax.tree_util.tree_map(lambda x: x * sharpen, params["final_6"])
    state = state.replace(step=state.step + step, params=params)
    resolved = config_to_dict(config)
    resolved["model"]["num_classes"] = num_classes
    meta = {"config": resolved, "model": config.model.name, "num_classes": num_classes,
            "class_names": list(class_names), "step": step, "metrics": None}
    manager = checkpoint.make_manager(os.path.join(workdir, checkpoint.CHECKPOINTS_SUBDIR),
                                      async_save=False)
    checkpoint.save(manager, state, None, meta, None)
    manager.wait_until_finished()
    manager.close()
    return workdir
