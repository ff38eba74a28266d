"""PhantomConfig: every setting that decides a phantom's pixels and files."""

from __future__ import annotations

from dataclasses import dataclass

from lungslice.errors import ConfigError

__all__ = ["KERNELS", "Kernel", "PhantomConfig"]


@dataclass(frozen=True)
class Kernel:
    """A reconstruction kernel: in-plane blur and noise.

    Attributes
    ----------
    name : str
        Name written to ConvolutionKernel.
    blur_mm : float
        Gaussian sigma (mm) of the in-plane point spread.
    noise_hu : float
        Noise standard deviation (HU) in uniform soft tissue at the reference
        dose (the noise is blurred with the image, so ``blur_mm`` sets its
        grain; edge enhancement raises it further).
    sharpen : float
        Edge enhancement of sharp (bone) kernels: the image plus ``sharpen``
        times its difference from a 2.5x wider blur (overshoot at edges, as
        high-resolution kernels show). 0 for smooth kernels.
    """

    name: str
    blur_mm: float
    noise_hu: float
    sharpen: float = 0.0


#: The kernels a phantom can be reconstructed with (sharper = noisier).
KERNELS: dict[str, Kernel] = {
    "soft": Kernel("SOFT", blur_mm=0.9, noise_hu=17.0),
    "standard": Kernel("STANDARD", blur_mm=0.6, noise_hu=18.0),
    "lung": Kernel("LUNG", blur_mm=0.35, noise_hu=58.0),
    "bone": Kernel("BONE", blur_mm=0.3, noise_hu=52.0, sharpen=0.6),
}


@dataclass(frozen=True)
class PhantomConfig:
    """How a phantom is rendered and written (recorded in every manifest).

    Attributes
    ----------
    seed : int
        Seeds every random choice (anatomy, vessels, noise, nodule texture);
        the same seed gives byte-identical pixel data.
    matrix : int
        512 (LIDC's grid) or 256 (in-plane downsampled: pixel spacing doubles,
        contours are scaled, nodules keep their partial-volume edges).
    z_margin_mm : float or None
        None writes every slice of the scan. Otherwise only slices within this
        distance (mm) of a nodule's contours are written; a scan without nodules
        keeps the slices within this distance of its middle.
    kernel : str
        "soft", "standard", "lung", "bone", or "auto" (picked per scan from the seed,
        so a cohort mixes kernels as LIDC-IDRI does).
    noise_hu : float or None
        Override the soft-tissue noise (HU); None uses the kernel's, scaled per
        scan by a drawn dose level and the patient's habitus (larger patients
        are noisier).
    mask_mode : str
        "consensus": nodules are the pixels inside >= 50 % of the cluster's
        readers' contours; "reader": one reader's contours (``reader``).
    reader : int
        Which annotation of each cluster "reader" mode uses (clamped to the
        cluster's size).
    fov_padding : bool
        Pixels outside the reconstruction circle hold the padding value
        (raw -2000, i.e. -3024 HU, declared in PixelPaddingValue) as GE
        scanners write them.
    nodules : bool
        Render the readers' nodules (False gives the same scan without them).
    """

    seed: int = 0
    matrix: int = 512
    z_margin_mm: float | None = None
    kernel: str = "auto"
    noise_hu: float | None = None
    mask_mode: str = "consensus"
    reader: int = 0
    fov_padding: bool = True
    nodules: bool = True

    def __post_init__(self) -> None:
        if self.matrix not in (256, 512):
            raise ConfigError(
                f"PhantomConfig.matrix must be 512 or 256, got {self.matrix}. "
                "Fix: --matrix 512 (LIDC's grid) or --matrix 256 (half resolution)."
            )
        if self.z_margin_mm is not None and not self.z_margin_mm >= 0:
            raise ConfigError(
                f"PhantomConfig.z_margin_mm must be >= 0 mm or None, got {self.z_margin_mm}"
            )
        if self.kernel != "auto" and self.kernel not in KERNELS:
            raise ConfigError(
                f"PhantomConfig.kernel must be 'auto' or one of {sorted(KERNELS)}, "
                f"got {self.kernel!r}"
            )
        if self.noise_hu is not None and not self.noise_hu >= 0:
            raise ConfigError(f"PhantomConfig.noise_hu must be >= 0 HU, got {self.noise_hu}")
        if self.mask_mode not in ("consensus", "reader"):
            raise ConfigError(
                f"PhantomConfig.mask_mode must be 'consensus' or 'reader', got {self.mask_mode!r}"
            )
        if self.reader < 0:
            raise ConfigError(f"PhantomConfig.reader must be >= 0, got {self.reader}")
