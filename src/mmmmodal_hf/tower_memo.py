"""Training with frozen towers: run each tower once per distinct medium and reuse its output.

Training shows the same media again and again (each epoch, and in every conversation that reuses
one), and a frozen tower gives the same features each time. `RememberedTowers` runs each tower only
on media it has not seen and hands the model the rest as an explicit input of its forward
(`image_tower_states`, `audio_tower_states`, which the towers then do not compute);
`MMMModalTrainer.compute_loss` adds them to every batch. The model's weights, its saved folders and
its code are untouched. Both published stages keep the towers frozen.
"""

import hashlib
from collections import OrderedDict

import torch
from torch import nn


class TowerOutputMemo:
    """A frozen tower's outputs for the media it has already seen, recognised by their input bytes.

    Keeps at most `max_media` outputs, dropping the least recently used first. Each kept output is
    one medium's slots by the tower's width (SigLIP so400m at 384 pixels: 729 x 1152 floats, 3.4 MB
    in float32), on the tower's device.
    """

    def __init__(self, name: str, tower: nn.Module, max_media: int):
        if max_media < 1:
            raise ValueError(f"max_media must be at least 1; got {max_media}")
        self.name, self.tower, self.max_media = name, tower, max_media
        self.outputs: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.check_frozen()

    def check_frozen(self) -> None:
        trainable = next((n for n, p in self.tower.named_parameters() if p.requires_grad), None)
        if trainable is not None:
            raise RuntimeError(
                f"the {self.name} tower has trainable parameters ({trainable}, ...): its outputs change as it "
                "trains and cannot be remembered. Freeze it, or train without --remember_tower_outputs."
            )

    @staticmethod
    def key(row: torch.Tensor) -> bytes:
        data = row.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
        digest = hashlib.blake2b(data.tobytes(), digest_size=16)
        digest.update(f"{row.dtype}{row.device}{tuple(row.shape)}".encode())
        return digest.digest()

    def __call__(self, inputs: torch.Tensor, run) -> torch.Tensor:
        """`run(inputs)`'s result, with the tower run only on rows not seen before."""
        self.check_frozen()
        keys = [self.key(row) for row in inputs]
        first_row = {}
        for row, k in enumerate(keys):
            first_row.setdefault(k, row)
        missing = [k for k in first_row if k not in self.outputs]  # each new medium once, even if repeated
        if missing:
            with torch.no_grad():
                computed = run(inputs[[first_row[k] for k in missing]])
            for k, output in zip(missing, computed):
                self.outputs[k] = output
        for k in keys:
            self.outputs.move_to_end(k)
        result = torch.stack([self.outputs[k] for k in keys])
        while len(self.outputs) > self.max_media:
            self.outputs.popitem(last=False)
        return result


class RememberedTowers:
    """Both towers' memos for a run, and the inputs they give a batch (see the module docstring).

    Refused for a tower with dropout, whose outputs vary between calls; a tower that trains is
    refused at its first call.
    """

    def __init__(self, model, max_media: int):
        config, self.inner = model.config, model.model
        dropout = {
            "vision": [config.vision_config.attention_dropout],
            "audio": [
                getattr(config.audio_config, name) for name in ("dropout", "attention_dropout", "activation_dropout")
            ],
        }
        for name, rates in dropout.items():
            if any(rates):
                raise ValueError(f"the {name} tower has dropout {max(rates)}: its outputs vary between calls")
        self.memos = {name: TowerOutputMemo(name, getattr(self.inner, f"{name}_tower"), max_media) for name in dropout}

    def tower_states(self, inputs: dict) -> dict[str, torch.Tensor]:
        """`image_tower_states` / `audio_tower_states` for the batch's media, each tower run on new media only."""
        states, vision, audio = {}, self.inner.vision_tower, self.inner.audio_tower
        pixels, features = inputs.get("pixel_values"), inputs.get("input_features")
        if pixels is not None and pixels.shape[0]:
            dtype = vision.get_input_embeddings().weight.dtype
            states["image_tower_states"] = self.memos["vision"](
                pixels.to(dtype), lambda rows: vision(rows).last_hidden_state
            )
        if features is not None and features.shape[0]:
            dtype = audio.conv1.weight.dtype
            states["audio_tower_states"] = self.memos["audio"](
                features.to(dtype), lambda rows: audio(rows).last_hidden_state
            )
        return states
