"""The baseline: feature merging as the published research code did it (mesolitica/multimodal-LLM).

Each medium goes through its encoder on its own (batch of one), and each sample's row is rebuilt
by concatenation around every medium in a Python loop; rows are then right-padded into a batch.
Written here only to measure against; the package never merges this way.
"""

import torch


def published_style_embeddings(model, input_ids: torch.Tensor, pixel_values, input_features) -> torch.Tensor:
    """Merged input embeddings for `input_ids` (slot tokens mark media), the published way."""
    embed = model.get_input_embeddings()
    config = model.config
    image_index = audio_index = 0
    rows = []
    for row_ids in input_ids:
        pieces, start, position = [], 0, 0
        ids = row_ids.tolist()
        while position < len(ids):
            token = ids[position]
            if token in (config.image_token_id, config.audio_token_id):
                end = position
                while end < len(ids) and ids[end] == token:
                    end += 1
                pieces.append(embed(row_ids[start:position]))
                if token == config.image_token_id:  # one image through SigLIP and the projector alone
                    features = model.get_image_features(pixel_values[image_index : image_index + 1]).pooler_output[0]
                    image_index += 1
                else:  # one window through Whisper and the projector alone
                    features = model.get_audio_features(input_features[audio_index : audio_index + 1]).pooler_output
                    audio_index += 1
                pieces.append(features[: end - position])
                start = position = end
            else:
                position += 1
        pieces.append(embed(row_ids[start:]))
        rows.append(torch.cat(pieces, dim=0))  # the row rebuilt around every medium
    length = max(row.shape[0] for row in rows)
    return torch.stack([torch.nn.functional.pad(row, (0, 0, 0, length - row.shape[0])) for row in rows])
