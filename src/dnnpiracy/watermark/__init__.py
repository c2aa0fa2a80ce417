"""Owner side: trigger inputs, watermark embedding, black-box verification."""

from dnnpiracy.watermark.embed import (
                                          Target,
                                          embed_watermark,
                                          fresh_triggers_for,
                                          owner_metrics,
                                          same_class_triggers_for,
)
from dnnpiracy.watermark.schemes import (
                                          SCHEMES,
                                          Scheme,
                                          apply_trigger,
                                          get_scheme,
                                          make_fresh_triggers,
                                          make_trigger_set,
                                          verification_chance,
)
from dnnpiracy.watermark.triggers import (
                                          TriggerSet,
                                          disc_mask,
                                          load_trigger_set,
                                          save_trigger_grid,
                                          save_trigger_set,
                                          stamp_discs,
)
from dnnpiracy.watermark.verify import Verification, binomial_sf, verify

__all__ = ["Target", "embed_watermark", "fresh_triggers_for", "owner_metrics", "same_class_triggers_for",
           "TriggerSet", "apply_trigger", "SCHEMES", "Scheme", "get_scheme",
           "disc_mask", "load_trigger_set", "make_fresh_triggers", "make_trigger_set", "save_trigger_grid",
           "save_trigger_set", "stamp_discs", "Verification", "binomial_sf", "verify",
           "verification_chance"]
