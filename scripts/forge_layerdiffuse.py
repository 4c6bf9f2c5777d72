"""LayerDiffuse for Stable Diffusion WebUI Forge: transparent images and layers.

Forge loads this file; everything it does lives in `lib_layerdiffuse.forge`. The WebUI registers
every class defined here: the txt2img/img2img panel (a Script) and the Extras tab's cutout (a
postprocessing script). Only modules are imported, never classes: an imported base class would
be registered as a script of its own.
"""

from modules import script_callbacks, scripts, scripts_postprocessing

from lib_layerdiffuse.forge import endpoints, extras, hooks, saving, settings_page, ui


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


class LayerDiffuseCutoutForExtras(scripts_postprocessing.ScriptPostprocessing):
    name = extras.NAME
    order = extras.ORDER

    def ui(self):
        return extras.build_ui()

    def process(self, pp, **args):
        extras.process(pp, **args)


script_callbacks.on_before_image_saved(saving.restore_alpha)
script_callbacks.on_image_grid(saving.remember_grid)
script_callbacks.on_ui_settings(settings_page.register)
script_callbacks.on_app_started(endpoints.register)
script_callbacks.on_after_component(ui.attach_to_checkpoint)
