"""Reading datasets, masks and images; joint (image, mask) augmentation."""
