"""Neural reconstruction of conformational heterogeneity: a VAE (encoder + latent-conditioned voxel decoder).

``vitreous train-vae`` / ``train-field`` train it (:mod:`vitreous.neural.train`);
:func:`vitreous.neural.trained.load_trained` reads a finished job folder back (latents, decoded volumes).
"""
