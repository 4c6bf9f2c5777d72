"""LayerDiffuse for Stable Diffusion WebUI Forge: transparent images and layers.

Forge loads this file; everything it does lives in `lib_layerdiffuse.forge`.
"""

from modules import script_callbacks, scripts

from lib_layerdiffuse.forge import hooks, saving, ui


class LayerDiffuseForForge(scripts.Script):
    sorting_priority = 15

    def title(self):
        return ui.TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return ui.build_ui(self, is_img2img)

    def process(self, p, *args):
        hooks.process(p, *args)

    def before_process_init_images(self, p, pp, *args, **kwargs):
        hooks.before_init_images(p, pp, *args)

    def process_before_every_sampling(self, p, *args, **kwargs):
        hooks.before_sampling(p, *args, **kwargs)

    def post_sample(self, p, ps, *args):
        hooks.post_sample(p, ps, *args)

    def postprocess_batch(self, p, *args, **kwargs):
        hooks.postprocess_batch(p, *args, **kwargs)

    def postprocess_image_after_composite(self, p, pp, *args):
        hooks.after_composite(p, pp, *args)

    def postprocess(self, p, processed, *args):
        hooks.postprocess(p, processed)


script_callbacks.on_before_image_saved(saving.restore_alpha)
script_callbacks.on_image_grid(saving.remember_grid)
