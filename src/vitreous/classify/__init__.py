"""2D classification of particle images: class averages by expectation-maximisation over in-plane rotations and
shifts with CTF (:mod:`~vitreous.classify.class2d`), on in-plane rotated Fourier points
(:mod:`~vitreous.classify.inplane`)."""
