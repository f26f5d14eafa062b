"""The prompts behind every inference figure (the same as the research that set the targets): a ~100-token
summary request for single-stream speed and eight prompts of different lengths for batches."""

QA = "What is the capital of France? Answer in one sentence."
LONG = (
    "You are reviewing a short report about renewable energy. The report says that solar panel prices fell "
    "by about ninety percent over the last decade, that wind power is now the cheapest source of new electricity "
    "in many countries, and that battery storage is growing quickly. Summarize the three main points of the report "
    "as a numbered list. Keep each point short and clear."
)
BATCH = [
    LONG,
    "Write a short poem about the sea and the wind at night. " * 3,
    QA,
    "Explain in simple words how a refrigerator keeps food cold, and why it needs electricity to work.",
    "List five fruits that are rich in vitamin C and say one sentence about each of them.",
    "Translate to French: The weather is nice today and I want to go for a walk in the park with my dog.",
    "What are the differences between a virus and a bacterium? Give a short answer suitable for a child. " * 2,
    "Give me three tips for writing clean Python code.",
]
