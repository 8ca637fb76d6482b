"""Copy the current study/headline/MSE tables into results/psfl-study/README.md."""
import re
from pathlib import Path

root = Path(__file__).resolve().parents[2] / "results" / "psfl-study"
readme = root / "README.md"
text = readme.read_text()
for tag, name in (("STUDY_TABLE", "study-table.md"), ("HEADLINE_TABLE", "headline-table.md"),
                  ("MSE_TABLE", "mse-table.md")):
    table = (root / name).read_text().strip()
    text = re.sub(rf"<!-- {tag} -->.*?<!-- /{tag} -->", f"<!-- {tag} -->\n\n{table}\n\n<!-- /{tag} -->", text,
                  flags=re.S)
readme.write_text(text)
