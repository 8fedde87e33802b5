"""The HDF5 feature store: f(x) cached once per image, with the spec (backbone, preprocessing, splits) that
says which features they are. The one thing both sides share: the backbone writes it, the heads and the
analyses read it, and neither side imports the other's code."""
