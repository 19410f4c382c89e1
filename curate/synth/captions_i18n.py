"""Scene descriptions in French, German, Spanish, Italian and Portuguese (the non_english fault).

Grammar is template-level but real: gender agreement of articles and adjectives everywhere, and
German case endings (nominative / accusative / dative after prepositions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curate.synth.scene import Scene, ShapeSpec
from curate.synth.vocab import LANGUAGES

Pair = tuple[str, str]


@dataclass(frozen=True)
class Lang:
    code: str
    nouns: dict[str, Pair]  # label -> (noun, gender m/f/n)
    colors: dict[str, Pair]  # colour -> (masc, fem) or German stem twice
    sizes: dict[str, Pair]  # size -> (masc, fem)
    backgrounds: dict[str, str]  # full prepositional phrase
    relations: dict[str, str]  # relation -> preposition taking the object NP
    counts: dict[int, str]
    conj: str
    one: tuple[str, ...]
    two: tuple[str, ...]
    many: tuple[str, ...]

    def np(self, s: ShapeSpec, case: str = "nom") -> str:
        noun, g = self.nouns[s.label]
        fem = g == "f"
        col = self.colors[s.color][1 if fem else 0]
        size = self.sizes[s.size][1 if fem else 0]
        c = self.code
        if c == "de":
            return _german_np(noun, g, [size, col], case)
        if c == "fr":
            art = "une" if fem else "un"
            if s.size == "medium":
                return f"{art} {noun} {col} de taille moyenne"
            return f"{art} {size} {noun} {col}"
        if c == "es":
            art = "una" if fem else "un"
            if s.size == "medium":
                return f"{art} {noun} {col} mediano" if not fem else f"{art} {noun} {col} mediana"
            pre = {"small": "pequeña" if fem else "pequeño", "large": "gran"}[s.size]
            return f"{art} {pre} {noun} {col}"
        if c == "it":
            if s.size == "medium":
                art = ("un'" if noun[0] in "aeiou" else "una ") if fem else "un "
                return f"{art}{noun} {col} di medie dimensioni"
            art = "una" if fem else "un"
            return f"{art} {size} {noun} {col}"
        # pt
        art = "uma" if fem else "um"
        if s.size == "medium":
            return f"{art} {noun} {col} de tamanho médio"
        return f"{art} {size} {noun} {col}"

    def rel_np(self, rel: str, s: ShapeSpec) -> str:
        prep = self.relations[rel]
        obj = self.np(s, "dat")
        if prep.endswith("'"):  # French elision: d'un, d'une
            return prep + obj
        return f"{prep} {obj}"

    def join(self, items: list[str]) -> str:
        if len(items) == 1:
            return items[0]
        return ", ".join(items[:-1]) + f" {self.conj} " + items[-1]


_DE_ART = {
    ("nom", "m"): ("ein", "er"), ("nom", "n"): ("ein", "es"), ("nom", "f"): ("eine", "e"),
    ("acc", "m"): ("einen", "en"), ("acc", "n"): ("ein", "es"), ("acc", "f"): ("eine", "e"),
    ("dat", "m"): ("einem", "en"), ("dat", "n"): ("einem", "en"), ("dat", "f"): ("einer", "en"),
}  # fmt: skip


def _german_np(noun: str, gender: str, stems: list[str], case: str) -> str:
    art, ending = _DE_ART[(case, gender)]
    return " ".join([art, *(f"{st}{ending}" for st in stems), noun])


FR = Lang(
    code="fr",
    nouns={"circle": ("cercle", "m"), "square": ("carré", "m"), "triangle": ("triangle", "m"),
           "rectangle": ("rectangle", "m"), "ellipse": ("ellipse", "f"), "star": ("étoile", "f"),
           "hexagon": ("hexagone", "m"), "diamond": ("losange", "m")},
    colors={"red": ("rouge", "rouge"), "orange": ("orange", "orange"), "yellow": ("jaune", "jaune"),
            "green": ("vert", "verte"), "blue": ("bleu", "bleue"), "purple": ("violet", "violette"),
            "pink": ("rose", "rose"), "brown": ("marron", "marron"), "black": ("noir", "noire"),
            "white": ("blanc", "blanche")},
    sizes={"small": ("petit", "petite"), "medium": ("moyen", "moyenne"), "large": ("grand", "grande")},
    backgrounds={"plain": "sur un fond uni", "gradient": "sur un fond en dégradé", "striped": "sur un fond rayé",
                 "checkered": "sur un fond à carreaux", "noisy": "sur un fond granuleux",
                 "blotchy": "sur un fond flou avec des taches", "grid": "sur un fond quadrillé",
                 "wavy": "sur un fond ondulé"},
    relations={"left of": "à gauche d'", "right of": "à droite d'", "above": "au-dessus d'",
               "below": "en dessous d'"},
    counts={2: "deux", 3: "trois", 4: "quatre"},
    conj="et",
    one=("{a} {bg}.", "Une photo d'{a} {bg}.", "On voit {a} {bg}.", "Il y a {a} dans l'image, {bg}.",
         "Image d'{a} {bg}, vue de près."),
    two=("{i} {rel}, {bg}.", "Une photo d'{i} {rel} {bg}.", "Il y a deux formes {bg} : {list}.",
         "On voit {i} qui se trouve {rel}, {bg}."),
    many=("Il y a {count} formes {bg} : {list}.", "Une photo avec {list}, {bg}.",
          "{i} {rel}, avec {others} à côté, {bg}."),
)  # fmt: skip

DE = Lang(
    code="de",
    nouns={"circle": ("Kreis", "m"), "square": ("Quadrat", "n"), "triangle": ("Dreieck", "n"),
           "rectangle": ("Rechteck", "n"), "ellipse": ("Ellipse", "f"), "star": ("Stern", "m"),
           "hexagon": ("Sechseck", "n"), "diamond": ("Raute", "f")},
    colors={"red": ("rot", "rot"), "orange": ("orangefarben", "orangefarben"), "yellow": ("gelb", "gelb"),
            "green": ("grün", "grün"), "blue": ("blau", "blau"), "purple": ("violett", "violett"),
            "pink": ("rosafarben", "rosafarben"), "brown": ("braun", "braun"),
            "black": ("schwarz", "schwarz"), "white": ("weiß", "weiß")},
    sizes={"small": ("klein", "klein"), "medium": ("mittelgroß", "mittelgroß"), "large": ("groß", "groß")},
    backgrounds={"plain": "auf einem einfarbigen Hintergrund", "gradient": "auf einem Hintergrund mit Farbverlauf",
                 "striped": "auf einem gestreiften Hintergrund", "checkered": "auf einem karierten Hintergrund",
                 "noisy": "auf einem körnigen Hintergrund", "blotchy": "auf einem fleckigen, unscharfen Hintergrund",
                 "grid": "auf einem Hintergrund mit Gittermuster", "wavy": "auf einem gewellten Hintergrund"},
    relations={"left of": "links von", "right of": "rechts von", "above": "über", "below": "unter"},
    counts={2: "zwei", 3: "drei", 4: "vier"},
    conj="und",
    one=("{a} {bg}.", "Ein Foto von {a_dat} {bg}.", "Man sieht {a_acc} {bg}.",
         "Auf dem Bild ist {a} {bg} zu sehen.", "Nahaufnahme von {a_dat} {bg}."),
    two=("{i} {rel} {bg}.", "Auf dem Foto befindet sich {i} {rel}, {bg}.", "Zwei Formen {bg}: {list}.",
         "Man sieht {i_acc} {rel} {bg}."),
    many=("Es gibt {count} Formen {bg}: {list}.", "Ein Foto mit {list_dat} {bg}.",
          "{i} {rel}, daneben {others}, {bg}."),
)  # fmt: skip

ES = Lang(
    code="es",
    nouns={"circle": ("círculo", "m"), "square": ("cuadrado", "m"), "triangle": ("triángulo", "m"),
           "rectangle": ("rectángulo", "m"), "ellipse": ("elipse", "f"), "star": ("estrella", "f"),
           "hexagon": ("hexágono", "m"), "diamond": ("rombo", "m")},
    colors={"red": ("rojo", "roja"), "orange": ("naranja", "naranja"), "yellow": ("amarillo", "amarilla"),
            "green": ("verde", "verde"), "blue": ("azul", "azul"), "purple": ("morado", "morada"),
            "pink": ("rosa", "rosa"), "brown": ("marrón", "marrón"), "black": ("negro", "negra"),
            "white": ("blanco", "blanca")},
    sizes={"small": ("pequeño", "pequeña"), "medium": ("mediano", "mediana"), "large": ("gran", "gran")},
    backgrounds={"plain": "sobre un fondo liso", "gradient": "sobre un fondo degradado",
                 "striped": "sobre un fondo de rayas", "checkered": "sobre un fondo a cuadros",
                 "noisy": "sobre un fondo granulado", "blotchy": "sobre un fondo con manchas borrosas",
                 "grid": "sobre un fondo cuadriculado", "wavy": "sobre un fondo ondulado"},
    relations={"left of": "a la izquierda de", "right of": "a la derecha de", "above": "encima de",
               "below": "debajo de"},
    counts={2: "dos", 3: "tres", 4: "cuatro"},
    conj="y",
    one=("{a} {bg}.", "Una foto de {a} {bg}.", "Se ve {a} {bg}.", "Imagen de {a} {bg}, vista de cerca.",
         "En la imagen hay {a} {bg}."),
    two=("{i} {rel}, {bg}.", "Una foto de {i} {rel} {bg}.", "Dos figuras {bg}: {list}.",
         "Hay {i} {rel} {bg}."),
    many=("Hay {count} figuras {bg}: {list}.", "Una foto con {list} {bg}.",
          "{i} {rel}, junto a {others}, {bg}."),
)  # fmt: skip

IT = Lang(
    code="it",
    nouns={"circle": ("cerchio", "m"), "square": ("quadrato", "m"), "triangle": ("triangolo", "m"),
           "rectangle": ("rettangolo", "m"), "ellipse": ("ellisse", "f"), "star": ("stella", "f"),
           "hexagon": ("esagono", "m"), "diamond": ("rombo", "m")},
    colors={"red": ("rosso", "rossa"), "orange": ("arancione", "arancione"), "yellow": ("giallo", "gialla"),
            "green": ("verde", "verde"), "blue": ("blu", "blu"), "purple": ("viola", "viola"),
            "pink": ("rosa", "rosa"), "brown": ("marrone", "marrone"), "black": ("nero", "nera"),
            "white": ("bianco", "bianca")},
    sizes={"small": ("piccolo", "piccola"), "medium": ("medio", "media"), "large": ("grande", "grande")},
    backgrounds={"plain": "su uno sfondo uniforme", "gradient": "su uno sfondo sfumato",
                 "striped": "su uno sfondo a righe", "checkered": "su uno sfondo a scacchi",
                 "noisy": "su uno sfondo granuloso", "blotchy": "su uno sfondo con macchie sfocate",
                 "grid": "su uno sfondo a griglia", "wavy": "su uno sfondo ondulato"},
    relations={"left of": "a sinistra di", "right of": "a destra di", "above": "sopra", "below": "sotto"},
    counts={2: "due", 3: "tre", 4: "quattro"},
    conj="e",
    one=("{a} {bg}.", "Una foto di {a} {bg}.", "Si vede {a} {bg}.", "Immagine di {a} {bg}, vista da vicino.",
         "Nella foto c'è {a} {bg}."),
    two=("{i} {rel}, {bg}.", "Una foto di {i} {rel} {bg}.", "Due forme {bg}: {list}.",
         "C'è {i} {rel} {bg}."),
    many=("Ci sono {count} forme {bg}: {list}.", "Una foto con {list} {bg}.",
          "{i} {rel}, accanto a {others}, {bg}."),
)  # fmt: skip

PT = Lang(
    code="pt",
    nouns={"circle": ("círculo", "m"), "square": ("quadrado", "m"), "triangle": ("triângulo", "m"),
           "rectangle": ("retângulo", "m"), "ellipse": ("elipse", "f"), "star": ("estrela", "f"),
           "hexagon": ("hexágono", "m"), "diamond": ("losango", "m")},
    colors={"red": ("vermelho", "vermelha"), "orange": ("laranja", "laranja"), "yellow": ("amarelo", "amarela"),
            "green": ("verde", "verde"), "blue": ("azul", "azul"), "purple": ("roxo", "roxa"),
            "pink": ("rosa", "rosa"), "brown": ("marrom", "marrom"), "black": ("preto", "preta"),
            "white": ("branco", "branca")},
    sizes={"small": ("pequeno", "pequena"), "medium": ("médio", "média"), "large": ("grande", "grande")},
    backgrounds={"plain": "sobre um fundo liso", "gradient": "sobre um fundo degradê",
                 "striped": "sobre um fundo listrado", "checkered": "sobre um fundo xadrez",
                 "noisy": "sobre um fundo granulado", "blotchy": "sobre um fundo com manchas desfocadas",
                 "grid": "sobre um fundo quadriculado", "wavy": "sobre um fundo ondulado"},
    relations={"left of": "à esquerda de", "right of": "à direita de", "above": "acima de",
               "below": "abaixo de"},
    counts={2: "duas", 3: "três", 4: "quatro"},
    conj="e",
    one=("{a} {bg}.", "Uma foto de {a} {bg}.", "Vemos {a} {bg}.", "Imagem de {a} {bg}, vista de perto.",
         "Na imagem há {a} {bg}."),
    two=("{i} {rel}, {bg}.", "Uma foto de {i} {rel} {bg}.", "Duas formas {bg}: {list}.",
         "Há {i} {rel} {bg}."),
    many=("Há {count} formas {bg}: {list}.", "Uma foto com {list} {bg}.",
          "{i} {rel}, ao lado de {others}, {bg}."),
)  # fmt: skip

LANGS: dict[str, Lang] = {lang.code: lang for lang in (FR, DE, ES, IT, PT)}
assert tuple(LANGS) == LANGUAGES


def caption_foreign(scene: Scene, rng: np.random.Generator, code: str | None = None) -> tuple[str, str]:
    """(caption, language code): the scene described in one of the five languages."""
    if code is None:
        code = LANGUAGES[int(rng.integers(len(LANGUAGES)))]
    lang = LANGS[code]
    shapes = scene.shapes
    bg = lang.backgrounds[scene.background]
    fields: dict[str, str] = {"bg": bg}
    if len(shapes) == 1:
        template = lang.one[int(rng.integers(len(lang.one)))]
        s = shapes[0]
        fields.update(a=lang.np(s), a_acc=lang.np(s, "acc"), a_dat=lang.np(s, "dat"))
    else:
        i, rel, j = scene.relations[int(rng.integers(len(scene.relations)))]
        pool = lang.two if len(shapes) == 2 else lang.many
        template = pool[int(rng.integers(len(pool)))]
        others = [lang.np(shapes[k]) for k in range(len(shapes)) if k not in (i, j)]
        fields.update(
            i=lang.np(shapes[i]),
            i_acc=lang.np(shapes[i], "acc"),
            rel=lang.rel_np(rel, shapes[j]),
            list=lang.join([lang.np(s) for s in shapes]),
            list_dat=lang.join([lang.np(s, "dat") for s in shapes]),
            others=lang.join(others) if others else "",
            count=lang.counts[len(shapes)],
        )
    text = template.format(**fields)
    return text[0].upper() + text[1:], code
