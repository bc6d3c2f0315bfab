"""``data.augment_on = "device"``: the host draws each sample's augmentation parameters
(:mod:`.params`, :mod:`.batches`) and the accelerator renders the pixels in the train step
(:mod:`.augment`)."""
