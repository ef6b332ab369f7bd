"""Component configs of the official checkpoint, and a tiny variant of the same architecture.

The official values are those of the published checkpoint's config files (Jamichsu/Stream-DiffVSR:
SD x4-upscaler lineage; the ControlNet from StableVSR; the VAE from the reference's
TemporalAutoencoderTiny). They are only used to *write* random-weight checkpoints; loading always
reads the checkpoint's own config files.
"""

from __future__ import annotations

from typing import Any

MODEL_ID = "Jamichsu/Stream-DiffVSR"

_DOWN = ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
_UP = ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]

SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.02,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0001,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "trailing",
    "trained_betas": None,
}


def unet_config(
    width: tuple[int, ...] = (256, 512, 512, 1024),
    cross_dim: int = 1024,
    heads: int = 8,
    groups: int = 32,
) -> dict[str, Any]:
    return {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": heads,
        "block_out_channels": list(width),
        "center_input_sample": False,
        "cross_attention_dim": cross_dim,
        "down_block_types": _DOWN,
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 7,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": groups,
        "num_class_embeds": None,
        "only_cross_attention": [True, True, True, False],
        "out_channels": 4,
        "sample_size": 128,
        "up_block_types": _UP,
        "use_linear_projection": True,
    }


def controlnet_config(
    width: tuple[int, ...] = (256, 512, 512, 1024),
    cross_dim: int = 1024,
    heads: int = 8,
    groups: int = 32,
    cond_channels: tuple[int, ...] = (64, 128, 256),
) -> dict[str, Any]:
    config = unet_config(width, cross_dim, heads, groups)
    for key in ("center_input_sample", "out_channels", "sample_size", "up_block_types"):
        del config[key]
    config.update(
        _class_name="ControlNetModel",
        conditioning_channels=3,
        conditioning_embedding_out_channels=list(cond_channels),
        controlnet_conditioning_channel_order="rgb",
    )
    return config


def vae_config(channels: int = 64, scaling_factor: float = 1.0) -> dict[str, Any]:
    return {
        "_class_name": "TemporalAutoencoderTiny",
        "act_fn": "relu",
        "decoder_block_out_channels": [channels] * 3,
        "encoder_block_out_channels": [channels] * 3,
        "force_upcast": False,
        "in_channels": 3,
        "latent_channels": 4,
        "latent_magnitude": 3,
        "latent_shift": 0.5,
        "num_decoder_blocks": [3, 3, 1],
        "num_encoder_blocks": [1, 3, 3],
        "out_channels": 3,
        "scaling_factor": scaling_factor,
        "upsample_fn": "nearest",
        "upsampling_scaling_factor": 2,
    }


def text_encoder_config(
    hidden: int = 1024, layers: int = 23, vocab_size: int = 49408
) -> dict[str, Any]:
    return {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "hidden_act": "gelu",
        "hidden_size": hidden,
        "intermediate_size": hidden * 4,
        "max_position_embeddings": 77,
        "num_attention_heads": max(1, hidden // 64),
        "num_hidden_layers": layers,
        "projection_dim": 512,
        "vocab_size": vocab_size,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
        "layer_norm_eps": 1e-05,
        "torch_dtype": "float32",
    }


# "full": the official shapes (a 1-layer text encoder: it runs once, at load, and only its width
# matters). "tiny": the same architecture, narrow enough for CPU tests.
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "unet": unet_config(),
        "controlnet": controlnet_config(),
        "vae": vae_config(),
        "text_encoder": {"hidden": 1024, "layers": 1},
    },
    "tiny": {
        "unet": unet_config((32, 32, 64, 64), cross_dim=32, heads=4, groups=8),
        "controlnet": controlnet_config(
            (32, 32, 64, 64), cross_dim=32, heads=4, groups=8, cond_channels=(8, 16, 32)
        ),
        "vae": vae_config(channels=16),
        "text_encoder": {"hidden": 32, "layers": 1},
    },
}
