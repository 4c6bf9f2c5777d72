"""Images as layers: splitting an image into RGBA layers (Qwen-Image-Layered) and writing
layers as PNG files, a layered PSD and a ZIP."""
