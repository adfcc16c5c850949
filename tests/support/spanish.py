"""A kind of request the shipped model misses: support requests written in Spanish, by
volunteers writing from personal addresses (a site whose clients' volunteers include
Spanish speakers).  The model knows no Spanish: such mail scores close to even odds,
under the threshold.  The first five teach, the others test; the tests check that
every one is missed before anything is learned."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import make_msgid

from support.mail import make_message

SENDER = "correo.example"
ASSISTANCE = "accueil@assistance.example.org"    # their structure is unknown

TEACH = [
    ("Consulta", "Hola Alice,\n\nel programa de contabilidad no abre desde ayer, sale un "
     "mensaje raro en la pantalla. ¿Podéis mirarlo?\n\nGracias,\nCarmen\n"),
    ("Ayuda", "Buenos días,\n\nno consigo entrar en mi correo desde el móvil, me pide la "
     "contraseña todo el rato.\n\nUn saludo,\nLuis\n"),
    ("Impresora", "Hola,\n\nla impresora de la oficina no imprime nada desde esta mañana, "
     "se queda la luz naranja. ¿Podéis venir a verla?\n\nMarta\n"),
    ("Conexión", "Buenas tardes,\n\nla conexión de la sala de reuniones se corta cada cinco "
     "minutos. ¿Lo podéis revisar, por favor?\n\nGracias,\nPablo\n"),
    ("Cuenta nueva", "Hola Bob,\n\ntenemos una nueva compañera, Ana García. ¿Podéis crearle "
     "una cuenta de correo y darle acceso a la carpeta compartida?\n\nSaludos,\nElena\n"),
]

TEST = [
    ("Problema con el correo", "Hola,\n\ndesde ayer no recibo correos en mi buzón; los "
     "envío pero no llegan las respuestas. ¿Podéis mirarlo?\n\nGracias,\nPilar\n"),
    ("Carpeta compartida", "Buenos días,\n\nla carpeta compartida no se actualiza en mi "
     "ordenador, sale un mensaje de error cada vez.\n\nUn saludo,\nJorge\n"),
]


def request(subject: str, body: str, n: int) -> EmailMessage:
    return make_message(sender=f"Voluntario {n} <voluntario{n}@{SENDER}>",
                        to="alice@example.org", subject=subject, body=body)


def forward_as_attachment(original: EmailMessage, *, note: str = "Pour l'assistance, "
                          "merci.\n\nAlice\n") -> EmailMessage:
    """Alice forwards ``original`` to the assistance address, attached (message/rfc822)."""
    fwd = EmailMessage()
    fwd["From"] = "Alice <alice@example.org>"
    fwd["To"] = ASSISTANCE
    fwd["Subject"] = "TR: " + str(original["Subject"])
    fwd["Message-ID"] = make_msgid(domain="example.org")
    fwd.set_content(note)
    fwd.add_attachment(original)
    return fwd


def forward_inline(original: EmailMessage) -> EmailMessage:
    """Alice forwards ``original`` inline, as Outlook does (no Message-ID of it)."""
    fwd = EmailMessage()
    fwd["From"] = "Alice <alice@example.org>"
    fwd["To"] = ASSISTANCE
    fwd["Subject"] = "TR: " + str(original["Subject"])
    fwd["Message-ID"] = make_msgid(domain="example.org")
    body = original.get_content()
    fwd.set_content("Bonjour, à traiter.\nAlice\n\n"
                    "________________________________\n"
                    f"De : {original['From']}\n"
                    "Envoyé : mardi 3 novembre 2026 09:30\n"
                    f"À : {original['To']}\n"
                    f"Objet : {original['Subject']}\n\n{body}")
    return fwd
