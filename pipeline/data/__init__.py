"""The data side: images and their labels before the backbone sees them. ``sources`` reads a dataset's
layout (folders, archives, label files, CIFAR-10) into splits (``archive`` reads a tar archive in one pass),
``images`` decodes, resizes and batches the images,
and ``preprocessing`` records what a backbone asks of them (geometry, decode mode, normalisation). It
lives here, below the backbone, because the image code applies it; the backbone only chooses its values.
Nothing on the head side imports this package: heads read the feature store, never images."""
