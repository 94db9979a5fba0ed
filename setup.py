from pathlib import Path

from setuptools import find_packages, setup

# Compatible ranges: installs into a cluster's own torch / Transformer Engine container without
# replacing its torch. megatron-core: exactly the tested releases (0.16.1 on Python 3.11;
# 0.17.x-0.19.x on Python 3.12), the range megatron_sail.compat.versions checks at start-up.
# The exact versions CI tests are pinned in constraints.txt (3.11) and constraints-py312.txt.
setup(
    name="megatron-sail",
    version="0.1.0",
    description="Train SAIL-VL2 vision-language models on Megatron-Core",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["megatron_sail", "megatron_sail.*"]),
    install_requires=[
        "torch>=2.9",
        "megatron-core>=0.16.1,<0.20",
        "packaging>=23",  # the start-up version check
        "numpy>=1.24",
        "pyyaml>=6.0",
        "sentencepiece>=0.2",
        "pillow>=10.0",
        "tensorboard>=2.14",
        "safetensors>=0.4",
        "psutil>=5.9",
        "matplotlib>=3.7",
        "tokenizers>=0.19",  # the release's Qwen tokenizer files
        "av>=12",  # video is part of the product: PyAV (its own FFmpeg) decodes every codec on CPU
    ],
    extras_require={
        "te": ["transformer-engine[pytorch]>=1.13"],
        # Media decoding: DALI wheels are built per CUDA major version, so the user picks the
        # flavour matching the cluster's driver; PyAV decodes what DALI's CPU backend cannot.
        "video": [],  # kept for old install lines: PyAV is a base dependency now
        "dali-cuda12": ["nvidia-dali-cuda120>=1.40", "av>=12"],
        "dali-cuda13": ["nvidia-dali-cuda130>=2.0", "av>=12"],
        "test": ["pytest>=8.0", "transformers>=4.57", "nvidia-dali-cuda120>=1.40", "av>=12"],
    },
    entry_points={"console_scripts": ["sail=megatron_sail.cli:main"]},
)
