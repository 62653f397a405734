"""Image fingerprints: image bytes -> SHA-256 plus perceptual codes and verification
thumbnails. The names below are the public surface; the modules hold the recipe's parts."""

from imgdedup.fingerprint.model import HASH_ALGORITHM, Fingerprint, ImageLimits
from imgdedup.fingerprint.phash import code_hex, hamming
from imgdedup.fingerprint.recipe import fingerprint

__all__ = ["HASH_ALGORITHM", "Fingerprint", "ImageLimits", "code_hex", "fingerprint", "hamming"]
